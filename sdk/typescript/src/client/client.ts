/**
 * The moonx-ws WebSocket client, for browsers and Node.js.
 *
 * Guarantees, while the client is not closed:
 * - every subscription survives disconnects: after a reconnect (exponential
 *   backoff with jitter) the client re-authenticates and re-subscribes every
 *   channel, with `since` = the last `pos` it saw on that channel (SPEC 6.1);
 * - a handler never sees the same `eventId` twice within the last
 *   `dedupWindow` events (the seam of a resume, redeliveries);
 * - a gap it cannot rule out is never silent: a `subscribed` reply without
 *   `recovered: true` to a resume, or a private channel re-subscribed with no
 *   position, is reported through `onResumeFailed` so the app refetches;
 * - a dead connection is detected by ping/pong and replaced; a
 *   `slow_consumer` error or a 3008 close is a reconnect, never the end;
 * - a 4001 close (an operator revoked the user's sessions) is never retried
 *   with the same token: it is reported as a `session_revoked` error
 *   (`onSessionRevoked`), and the client reconnects only once `getToken`
 *   returns a different token; without one the client closes.
 */
import type { AnyEvent } from '../events/types.js';
import { MoonxClientError, MoonxServerError } from './errors.js';
import {
  CLOSE_CODES,
  RESUMABLE_CHANNELS,
  type Channel,
  type ChannelEventMap,
  type ClientMessage,
  type RequestId,
  type ServerMessage,
} from './protocol.js';

/** The code of our own close after a missing pong (private range; 4001 is the server's `session revoked`). */
const NO_PONG_CLOSE_CODE = 4002;

/** The part of the WebSocket API the client uses (browser `WebSocket` and `ws` both have it). */
export interface WebSocketLike {
  readonly readyState: number;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  onopen: ((ev: unknown) => void) | null;
  onmessage: ((ev: { data: unknown }) => void) | null;
  onclose: ((ev: { code: number; reason: string }) => void) | null;
  onerror: ((ev: unknown) => void) | null;
}
export type WebSocketConstructor = new (url: string) => WebSocketLike;

export interface ReconnectOptions {
  /** First delay after a drop (ms). Default 500. */
  initialDelayMs?: number;
  /** Ceiling of the delay (ms). Default 30000. */
  maxDelayMs?: number;
  /** Growth per failed attempt. Default 2. */
  factor?: number;
  /** Fraction of the delay that is random (0 = none, 1 = full jitter). Default 0.5. */
  jitter?: number;
}

export interface ClientOptions {
  /** `ws://host:3008/ws` or `wss://…/ws`. */
  url: string;
  /** A JWT; omit for an anonymous (public channels only) connection. */
  token?: string | null;
  /**
   * Returns a fresh token: called when there is none yet, before the current
   * one expires, when the server says it expired, and when it is refused.
   */
  getToken?: () => string | null | undefined | Promise<string | null | undefined>;
  /** Refresh this long before `expiresAt` (ms). Default 30000; 0 waits for the server's expiry notice. */
  refreshBeforeExpiryMs?: number;
  /** `false` disables reconnecting. */
  reconnect?: ReconnectOptions | false;
  /** Keep-alive ping period (ms). Default 25000; 0 disables. */
  pingIntervalMs?: number;
  /** A ping without a pong within this time means the connection is dead (ms). Default 10000. */
  pongTimeoutMs?: number;
  /** How long opening the socket, or a request (auth, subscribe, …), may take (ms). Default 10000. */
  requestTimeoutMs?: number;
  /** How many recent eventIds are remembered to drop duplicates. Default 2048. */
  dedupWindow?: number;
  /** A WebSocket implementation; default: the platform's, else the `ws` package. */
  WebSocket?: WebSocketConstructor;
  /** A channel resumed without proof that nothing was missed: refetch its state. */
  onResumeFailed?: (info: ResumeFailure) => void;
  /** A channel resumed with proof that nothing was missed (`recovered:true`); `missed` events follow. */
  onResumed?: (info: { channel: Channel; missed: number }) => void;
  /**
   * The server closed with 4001: an operator revoked the user's sessions and
   * the current token is refused. The user must sign in again: the client
   * reconnects only after `getToken` returns a new token; without `getToken`,
   * or if it returns no token or the same one, the client closes.
   */
  onSessionRevoked?: (error: MoonxClientError) => void;
  /** Errors that belong to no request (server notices, handler failures, refresh failures). */
  onError?: (error: Error) => void;
  onStateChange?: (state: ClientState) => void;
  onAuthenticated?: (identity: Identity) => void;
}

export type ClientState = 'idle' | 'connecting' | 'open' | 'reconnecting' | 'closed';

export interface Identity {
  userId: string;
  admin: boolean;
  /** Milliseconds since the epoch after which private events stop. */
  expiresAt: number;
}

export interface ResumeFailure {
  channel: Channel;
  /** `not_recovered`: the server answered `recovered:false` (or nothing); `no_position`: no event was seen yet to resume from. */
  reason: 'not_recovered' | 'no_position';
}

export interface EventInfo {
  channel: Channel;
  /** The stream position (private channels), as the server sent it. */
  pos?: string;
  /** A snapshot frame (the latest price on subscribe). */
  snapshot: boolean;
}

export type EventHandler<C extends Channel> = (event: ChannelEventMap[C], info: EventInfo) => void;

export interface SubscribeOptions {
  /** `prices` only: the tokens to receive (case-insensitive on the server). */
  tokens?: string[];
  /** This channel was resumed without proof that nothing was missed. */
  onResumeFailed?: (info: ResumeFailure) => void;
}

export interface Subscription {
  readonly channel: Channel;
  /** Removes this handler; the channel is unsubscribed when no handler is left. */
  unsubscribe(): Promise<void>;
}

interface ChannelState {
  handlers: Set<EventHandler<Channel>>;
  tokens?: string[];
  resumeListeners: Set<(info: ResumeFailure) => void>;
  /** Last `pos` seen on the channel. */
  pos?: string;
  /** Confirmed by the server on the current connection. */
  active: boolean;
}

interface Pending {
  resolve: (m: ServerMessage) => void;
  reject: (e: Error) => void;
  timer: ReturnType<typeof setTimeout>;
}

const OPEN = 1;
/** setTimeout's largest delay. */
const MAX_TIMER_MS = 2_147_483_647;

async function platformWebSocket(): Promise<WebSocketConstructor> {
  const g = globalThis as { WebSocket?: WebSocketConstructor };
  if (typeof g.WebSocket === 'function') return g.WebSocket;
  const mod = (await import('ws')) as unknown as { default: WebSocketConstructor };
  return mod.default;
}

/** Remembers the last `capacity` ids, forgetting the oldest first. */
class RecentIds {
  private readonly set = new Set<string>();
  constructor(private readonly capacity: number) {}
  /** `true` the first time an id is seen within the window. */
  firstTime(id: string): boolean {
    if (this.set.has(id)) return false;
    this.set.add(id);
    if (this.set.size > this.capacity) {
      const oldest = this.set.values().next().value as string;
      this.set.delete(oldest);
    }
    return true;
  }
}

export class MoonxClient {
  private readonly opts: Required<Pick<ClientOptions, 'refreshBeforeExpiryMs' | 'pingIntervalMs' | 'pongTimeoutMs' | 'requestTimeoutMs' | 'dedupWindow'>> & ClientOptions;
  private readonly reconnectOpts: Required<ReconnectOptions> | false;
  private readonly channels = new Map<Channel, ChannelState>();
  private readonly pending = new Map<RequestId, Pending>();
  private readonly recent: RecentIds;
  private socket: WebSocketLike | null = null;
  private token: string | null;
  private nextId = 1;
  private attempt = 0;
  private connectionCount = 0;
  private stateValue: ClientState = 'idle';
  private identityValue: Identity | null = null;
  private reconnectTimer: ReturnType<typeof setTimeout> | null = null;
  private pingTimer: ReturnType<typeof setInterval> | null = null;
  private refreshTimer: ReturnType<typeof setTimeout> | null = null;
  private opened: { resolve: () => void; reject: (e: Error) => void } | null = null;
  private refreshing: Promise<void> | null = null;

  constructor(options: ClientOptions) {
    this.opts = {
      refreshBeforeExpiryMs: 30_000,
      pingIntervalMs: 25_000,
      pongTimeoutMs: 10_000,
      requestTimeoutMs: 10_000,
      dedupWindow: 2048,
      ...options,
    };
    this.reconnectOpts =
      options.reconnect === false
        ? false
        : { initialDelayMs: 500, maxDelayMs: 30_000, factor: 2, jitter: 0.5, ...(options.reconnect ?? {}) };
    this.token = options.token ?? null;
    this.recent = new RecentIds(this.opts.dedupWindow);
  }

  get state(): ClientState {
    return this.stateValue;
  }

  /** Who the server authenticated this connection as; `null` when anonymous. */
  get identity(): Identity | null {
    return this.identityValue;
  }

  /** The last stream position seen per channel (what a resume sends as `since`). */
  positions(): Partial<Record<Channel, string>> {
    const out: Partial<Record<Channel, string>> = {};
    for (const [c, s] of this.channels) if (s.pos !== undefined) out[c] = s.pos;
    return out;
  }

  /**
   * Opens the connection: resolves once it is open, authenticated (when
   * there is a token) and every subscription is confirmed. Later drops are
   * repaired in the background.
   */
  connect(): Promise<void> {
    if (this.stateValue === 'closed') return Promise.reject(new MoonxClientError('closed', 'the client was closed'));
    if (this.stateValue === 'open') return Promise.resolve();
    return new Promise<void>((resolve, reject) => {
      const previous = this.opened;
      this.opened = {
        resolve: () => {
          previous?.resolve();
          resolve();
        },
        reject: (e) => {
          previous?.reject(e);
          reject(e);
        },
      };
      if (this.stateValue === 'idle') void this.open();
    });
  }

  /**
   * Subscribes `handler` to `channel`. Resolves when the server confirms
   * (immediately queued if not connected yet); rejects with the server's
   * error (`unauthorized`, `forbidden`, …).
   */
  async subscribe<C extends Channel>(channel: C, handler: EventHandler<C>, options: SubscribeOptions = {}): Promise<Subscription> {
    let st = this.channels.get(channel);
    const tokensChanged = st !== undefined && JSON.stringify(st.tokens) !== JSON.stringify(options.tokens);
    if (!st) {
      st = { handlers: new Set(), resumeListeners: new Set(), active: false };
      this.channels.set(channel, st);
    }
    st.handlers.add(handler as EventHandler<Channel>);
    if (options.onResumeFailed) st.resumeListeners.add(options.onResumeFailed);
    if (options.tokens !== undefined || tokensChanged) st.tokens = options.tokens;
    const subscription: Subscription = {
      channel,
      unsubscribe: () => this.removeHandler(channel, handler as EventHandler<Channel>, options.onResumeFailed),
    };
    if ((!st.active || tokensChanged) && this.isOpen()) {
      try {
        await this.sendSubscribe(channel, st, false);
      } catch (e) {
        st.handlers.delete(handler as EventHandler<Channel>);
        if (st.handlers.size === 0) this.channels.delete(channel);
        throw e;
      }
    }
    return subscription;
  }

  /** Unsubscribes every handler of `channel`. */
  async unsubscribe(channel: Channel): Promise<void> {
    const st = this.channels.get(channel);
    this.channels.delete(channel);
    if (st?.active && this.isOpen()) await this.request({ type: 'unsubscribe', channel });
  }

  /** A round trip to the server; resolves with the time it took (ms). */
  async ping(): Promise<number> {
    const started = Date.now();
    await this.request({ type: 'ping' });
    return Date.now() - started;
  }

  /** Changes the token: authenticates the open connection with it now. */
  async setToken(token: string | null): Promise<void> {
    this.token = token;
    if (this.isOpen() && token) {
      await this.authenticate();
      await this.resubscribePrivate();
    }
  }

  /** Ends the connection for good; pending requests fail with `closed`. */
  close(): void {
    if (this.stateValue === 'closed') return;
    this.setState('closed');
    this.clearTimers();
    this.failPending(new MoonxClientError('closed', 'the client was closed'));
    const s = this.socket;
    this.socket = null;
    if (s) {
      detach(s);
      try {
        s.close(1000, 'client closed');
      } catch {
        /* already closing */
      }
    }
    this.opened?.reject(new MoonxClientError('closed', 'the client was closed'));
    this.opened = null;
  }

  // ---- connection lifecycle ----

  private isOpen(): boolean {
    return this.stateValue === 'open' && this.socket?.readyState === OPEN;
  }

  private setState(s: ClientState): void {
    if (this.stateValue === s) return;
    this.stateValue = s;
    this.opts.onStateChange?.(s);
  }

  private async open(): Promise<void> {
    this.setState(this.connectionCount === 0 ? 'connecting' : 'reconnecting');
    let Ctor: WebSocketConstructor;
    try {
      Ctor = this.opts.WebSocket ?? (await platformWebSocket());
    } catch (e) {
      this.fatal(new MoonxClientError('disconnected', 'no WebSocket implementation: install the `ws` package', e));
      return;
    }
    if (this.stateValue === 'closed') return;
    let socket: WebSocketLike;
    try {
      socket = new Ctor(this.opts.url);
    } catch (e) {
      this.fatal(new MoonxClientError('disconnected', `cannot open ${this.opts.url}`, e));
      return;
    }
    this.socket = socket;
    // A server that accepts TCP but never completes the upgrade must not hold us forever.
    const openTimer = setTimeout(() => {
      if (socket === this.socket && this.stateValue !== 'open') this.dropSocket(socket, 4003, 'open timed out');
    }, this.opts.requestTimeoutMs);
    socket.onopen = () => {
      clearTimeout(openTimer);
      void this.onOpen(socket);
    };
    socket.onmessage = (ev) => this.onFrame(ev.data);
    socket.onerror = () => {
      /* the close event follows; it decides */
    };
    socket.onclose = (ev) => this.onClose(socket, ev.code, ev.reason);
  }

  private fatal(e: Error): void {
    this.opts.onError?.(e);
    this.opened?.reject(e);
    this.opened = null;
    this.close();
  }

  private async onOpen(socket: WebSocketLike): Promise<void> {
    if (socket !== this.socket) return;
    this.connectionCount += 1;
    const resumed = this.connectionCount > 1;
    this.setState('open');
    this.startPing();
    try {
      if (this.token === null && this.opts.getToken) await this.refreshToken();
      if (this.token !== null) await this.authenticate();
      for (const [channel, st] of [...this.channels]) {
        st.active = false;
        try {
          await this.sendSubscribe(channel, st, resumed);
        } catch (e) {
          if (e instanceof MoonxServerError) {
            // The server refused the channel for good (e.g. forbidden): drop it and say so.
            this.channels.delete(channel);
            this.opts.onError?.(e);
          } else {
            throw e;
          }
        }
      }
      if (socket !== this.socket) return;
      this.attempt = 0;
      this.opened?.resolve();
      this.opened = null;
    } catch (e) {
      if (socket !== this.socket) return;
      // Could not set the connection up (timeout, drop): start over.
      this.opts.onError?.(e as Error);
      this.dropSocket(socket, 4000, 'setup failed');
    }
  }

  private onClose(socket: WebSocketLike, code: number, reason: string): void {
    if (socket !== this.socket) return;
    detach(socket);
    this.socket = null;
    this.stopPing();
    if (this.refreshTimer) clearTimeout(this.refreshTimer);
    this.refreshTimer = null;
    this.identityValue = null;
    for (const st of this.channels.values()) st.active = false;
    this.failPending(new MoonxClientError('disconnected', `the connection closed (${code}${reason ? ' ' + reason : ''})`));
    if (this.stateValue === 'closed') return;
    if (code === CLOSE_CODES.SESSION_REVOKED) {
      void this.afterRevocation(new MoonxClientError('session_revoked', `the session was revoked (${code}${reason ? ' ' + reason : ''}): sign in again`));
      return;
    }
    if (this.reconnectOpts === false) {
      const e = new MoonxClientError('disconnected', `the connection closed (${code}${reason ? ' ' + reason : ''}) and reconnect is off`);
      this.fatal(e);
      return;
    }
    if (code === CLOSE_CODES.SLOW_CONSUMER) {
      // We fell behind: reconnect and resume where we were.
      this.attempt = 0;
    }
    this.scheduleReconnect();
  }

  /**
   * A 4001 close: the token is dead. Report it, then reconnect only with a
   * different token from `getToken`; otherwise the client ends.
   */
  private async afterRevocation(e: MoonxClientError): Promise<void> {
    const revoked = this.token;
    this.token = null;
    this.opts.onSessionRevoked?.(e);
    if (!this.opts.getToken || this.reconnectOpts === false) {
      this.fatal(e);
      return;
    }
    this.setState('reconnecting');
    try {
      await this.refreshToken();
    } catch (refreshFailed) {
      this.opts.onError?.(refreshFailed as Error);
      this.fatal(e);
      return;
    }
    if (this.stateValue === 'closed') return;
    if (this.token === null || this.token === revoked) {
      this.token = null;
      this.fatal(e);
      return;
    }
    this.opts.onError?.(e);
    this.attempt = 0;
    this.scheduleReconnect();
  }

  private scheduleReconnect(): void {
    if (this.reconnectOpts === false || this.stateValue === 'closed') return;
    this.setState('reconnecting');
    const delay = this.backoffDelay(this.attempt);
    this.attempt += 1;
    this.reconnectTimer = setTimeout(() => {
      this.reconnectTimer = null;
      void this.open();
    }, delay);
  }

  /** Exponential backoff with jitter: `min(max, initial·factor^n)`, the `jitter` part of it random. */
  backoffDelay(attempt: number): number {
    if (this.reconnectOpts === false) return 0;
    const { initialDelayMs, maxDelayMs, factor, jitter } = this.reconnectOpts;
    const ceiling = Math.min(maxDelayMs, initialDelayMs * Math.pow(factor, attempt));
    return Math.round(ceiling * (1 - jitter) + Math.random() * ceiling * jitter);
  }

  /** Closes a socket we no longer trust; the close event schedules the reconnect. */
  private dropSocket(socket: WebSocketLike, code: number, reason: string): void {
    try {
      socket.close(code, reason);
    } catch {
      /* already closed */
    }
    // A socket that is gone without a handshake may never fire `close`: do not wait for it.
    setTimeout(() => this.onClose(socket, 1006, reason), 1000);
  }

  // ---- keep-alive ----

  private startPing(): void {
    this.stopPing();
    if (this.opts.pingIntervalMs <= 0) return;
    this.pingTimer = setInterval(() => {
      const socket = this.socket;
      if (!socket || !this.isOpen()) return;
      this.request({ type: 'ping' }, this.opts.pongTimeoutMs).catch((e) => {
        if (e instanceof MoonxClientError && e.code === 'timeout' && socket === this.socket) {
          this.dropSocket(socket, NO_PONG_CLOSE_CODE, 'no pong');
        }
      });
    }, this.opts.pingIntervalMs);
  }

  private stopPing(): void {
    if (this.pingTimer) clearInterval(this.pingTimer);
    this.pingTimer = null;
  }

  private clearTimers(): void {
    this.stopPing();
    if (this.reconnectTimer) clearTimeout(this.reconnectTimer);
    if (this.refreshTimer) clearTimeout(this.refreshTimer);
    this.reconnectTimer = null;
    this.refreshTimer = null;
  }

  // ---- authentication ----

  private async refreshToken(): Promise<void> {
    if (!this.opts.getToken) return;
    if (!this.refreshing) {
      this.refreshing = (async () => {
        try {
          const t = await this.opts.getToken!();
          this.token = t ?? null;
        } catch (e) {
          throw new MoonxClientError('token_refresh_failed', 'getToken failed', e);
        } finally {
          this.refreshing = null;
        }
      })();
    }
    return this.refreshing;
  }

  private async authenticate(): Promise<void> {
    let reply: ServerMessage;
    try {
      reply = await this.request({ type: 'auth', token: this.token! });
    } catch (e) {
      if (!(e instanceof MoonxServerError && e.code === 'unauthorized' && this.opts.getToken)) throw e;
      // Refused (expired, revoked): one fresh token, one more try.
      await this.refreshToken();
      if (this.token === null) throw e;
      reply = await this.request({ type: 'auth', token: this.token });
    }
    if (reply.type !== 'authenticated') return;
    this.identityValue = { userId: reply.userId, admin: reply.admin, expiresAt: reply.expiresAt };
    this.opts.onAuthenticated?.(this.identityValue);
    this.scheduleRefresh(reply.expiresAt);
  }

  private scheduleRefresh(expiresAt: number): void {
    if (this.refreshTimer) clearTimeout(this.refreshTimer);
    this.refreshTimer = null;
    if (!this.opts.getToken || this.opts.refreshBeforeExpiryMs <= 0) return;
    const wait = Math.min(MAX_TIMER_MS, Math.max(0, expiresAt - this.opts.refreshBeforeExpiryMs - Date.now()));
    this.refreshTimer = setTimeout(() => {
      this.refreshTimer = null;
      void this.reauthenticate();
    }, wait);
  }

  /** A fresh token, authenticated on the open connection, private channels resumed. */
  private async reauthenticate(): Promise<void> {
    try {
      await this.refreshToken();
      if (!this.isOpen() || this.token === null) return;
      await this.authenticate();
      await this.resubscribePrivate();
    } catch (e) {
      this.opts.onError?.(e instanceof Error ? e : new Error(String(e)));
    }
  }

  private async resubscribePrivate(): Promise<void> {
    for (const [channel, st] of [...this.channels]) {
      if (channel !== 'prices') await this.sendSubscribe(channel, st, true);
    }
  }

  // ---- requests ----

  private sendSubscribe(channel: Channel, st: ChannelState, resuming: boolean): Promise<void> {
    const resumable = RESUMABLE_CHANNELS.includes(channel);
    const since = resumable && resuming ? st.pos : undefined;
    const msg: ClientMessage = { type: 'subscribe', channel };
    if (st.tokens !== undefined) msg.tokens = st.tokens;
    if (since !== undefined) msg.since = since;
    return this.request(msg).then((reply) => {
      st.active = true;
      if (!resumable || !resuming || reply.type !== 'subscribed') return;
      const failure: ResumeFailure | null =
        since === undefined ? { channel, reason: 'no_position' } : reply.recovered === true ? null : { channel, reason: 'not_recovered' };
      if (failure) {
        this.opts.onResumeFailed?.(failure);
        for (const l of st.resumeListeners) l(failure);
      } else {
        this.opts.onResumed?.({ channel, missed: typeof reply.missed === 'number' ? reply.missed : 0 });
      }
    });
  }

  private request(msg: ClientMessage, timeoutMs = this.opts.requestTimeoutMs): Promise<ServerMessage> {
    const socket = this.socket;
    if (!socket || socket.readyState !== OPEN) {
      return Promise.reject(new MoonxClientError('disconnected', 'not connected'));
    }
    const id = this.nextId++;
    return new Promise<ServerMessage>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new MoonxClientError('timeout', `no reply to ${msg.type} within ${timeoutMs} ms`));
      }, timeoutMs);
      this.pending.set(id, { resolve, reject, timer });
      socket.send(JSON.stringify({ ...msg, id }));
    });
  }

  private failPending(e: Error): void {
    for (const [id, p] of this.pending) {
      clearTimeout(p.timer);
      p.reject(e);
      this.pending.delete(id);
    }
  }

  private async removeHandler(channel: Channel, handler: EventHandler<Channel>, onResume?: (i: ResumeFailure) => void): Promise<void> {
    const st = this.channels.get(channel);
    if (!st) return;
    st.handlers.delete(handler);
    if (onResume) st.resumeListeners.delete(onResume);
    if (st.handlers.size === 0) await this.unsubscribe(channel);
  }

  // ---- incoming frames ----

  private onFrame(data: unknown): void {
    let msg: ServerMessage;
    try {
      msg = JSON.parse(typeof data === 'string' ? data : String(data)) as ServerMessage;
      if (typeof msg !== 'object' || msg === null || typeof msg.type !== 'string') throw new Error('no type');
    } catch (e) {
      this.opts.onError?.(new MoonxClientError('bad_frame', 'the server sent a frame that is not protocol JSON', e));
      return;
    }
    switch (msg.type) {
      case 'event':
        this.onEvent(msg);
        return;
      case 'error': {
        const err = new MoonxServerError(msg.code, msg.message, msg.id);
        if (msg.id !== undefined && this.settle(msg.id, null, err)) return;
        this.onNotice(err);
        return;
      }
      default:
        if (msg.id !== undefined) this.settle(msg.id, msg, null);
    }
  }

  private settle(id: RequestId, reply: ServerMessage | null, err: Error | null): boolean {
    const p = this.pending.get(id);
    if (!p) return false;
    this.pending.delete(id);
    clearTimeout(p.timer);
    if (err) p.reject(err);
    else p.resolve(reply!);
    return true;
  }

  /** An error frame that answers no request. */
  private onNotice(err: MoonxServerError): void {
    this.opts.onError?.(err);
    const socket = this.socket;
    if (err.code === 'slow_consumer' && socket) {
      // The server is about to close with 3008; do not wait for it.
      this.dropSocket(socket, 4002, 'slow consumer');
    } else if (err.code === 'unauthorized' && this.identityValue) {
      // The token expired: private subscriptions ended. Refresh and resume them.
      this.identityValue = null;
      if (this.opts.getToken) void this.reauthenticate();
    }
  }

  private onEvent(msg: Extract<ServerMessage, { type: 'event' }>): void {
    const st = this.channels.get(msg.channel);
    if (!st) return;
    if (msg.pos !== undefined) st.pos = msg.pos;
    const event = msg.event as AnyEvent;
    const id = event?.metadata?.eventId;
    if (typeof id === 'string' && !this.recent.firstTime(id)) return;
    const info: EventInfo = { channel: msg.channel, snapshot: msg.snapshot === true, ...(msg.pos !== undefined ? { pos: msg.pos } : {}) };
    for (const h of st.handlers) {
      try {
        h(event as ChannelEventMap[Channel], info);
      } catch (e) {
        this.opts.onError?.(new MoonxClientError('handler_failed', `a ${msg.channel} handler threw`, e));
      }
    }
  }
}

const ignore = (): void => {};

/**
 * Stops a socket from reaching the client. Handlers become no-ops rather
 * than `null`: `ws` emits `error` when a socket still connecting is closed,
 * and an `error` without a listener would crash a Node.js process.
 */
function detach(s: WebSocketLike): void {
  s.onopen = ignore;
  s.onmessage = ignore;
  s.onclose = ignore;
  s.onerror = ignore;
}
