const user = 'user-456';
// Valid data of each built-in type (owned by user-456 where the type has an owner).
export const SAMPLE_DATA = {
  'price.updated': { token: 'ETH', chainId: 1, price: '3000.00', priceUsd: '3000.00', change24h: '-1.25', volume24h: '1250000.50' },
  'order.created': { orderId: 'o-1', userId: user, tokenIn: 'ETH', tokenOut: 'USDT', amountIn: '1.0', amountOutExpected: '3000.0', chainId: 1, orderType: 'market', status: 'pending' },
  'order.updated': { orderId: 'o-1', userId: user, status: 'filled', previousStatus: 'pending', filledAmount: '1.0' },
  'order.cancelled': { orderId: 'o-1', userId: user, reason: 'user request' },
  'portfolio.updated': { userId: user, totalValueUsd: '3000.00', holdings: [{ token: 'ETH', chainId: 1, balance: '1.0', valueUsd: '3000.00' }] },
  'trade.executed': { tradeId: 't-1', orderId: 'o-1', userId: user, tokenIn: 'ETH', tokenOut: 'USDT', amountIn: '1.0', amountOut: '2999.5', price: '2999.5', chainId: 1, txHash: '0xabc' },
  'trade.failed': { orderId: 'o-2', userId: user, tokenIn: 'ETH', tokenOut: 'USDT', amountIn: '1.0', chainId: 1, reason: 'slippage' },
  'user.connected': { userId: user, connectionId: 'c-1', instanceId: 'gw-1' },
  'user.disconnected': { userId: user, connectionId: 'c-1', instanceId: 'gw-1', durationMs: 1200 },
  'session.revoked': { userId: user, revokedAt: 1764000000000, reason: 'account compromised', revokedBy: 'ops-admin' },
  'system.health_check': { service: 'price-service', status: 'healthy', uptimeSeconds: 60 },
  'system.error': { service: 'price-service', errorCode: 'E42', message: 'feed stalled', severity: 'warning' },
};

