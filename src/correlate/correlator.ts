/**
 * Joins packet-side facts (JA4T from the client SYN, JA4 from the ClientHello) with request-side facts
 * (one per HTTP request) per connection, and turns every request into a Row carrying all of them.
 *
 * Pure: no I/O, no timers. Time comes in through the `ts`/`now` arguments (milliseconds since the epoch),
 * so tests drive it with a fake clock. State is bounded: connections live in an LRU map capped at
 * `maxConnections` with an idle TTL; held rows are capped at `maxHeldRows`. Nothing is ever dropped:
 * eviction and overflow release rows early (without the missing facts) and count why.
 */
import type { Row, Tuple } from "../sink/row.ts";
import { LruMap } from "../capture/lru.ts";
import { type ConnKey, connKeyOf, normAddr } from "../capture/connkey.ts";
import { NumMap } from "../capture/nummap.ts";
import { PendingSyns } from "./pending_syns.ts";
import type { ConnTuple } from "../capture/requests.ts";

/**
 * Row.ts as `new Date(ts).toISOString()` (a non-finite ts as the epoch). Rows come in bursts within the same
 * millisecond, so the last string is reused; Date truncates the time value to an integer, hence the key.
 */
let lastMs = NaN;
let lastIso = "";
function isoMs(ts: number): string {
  const ms = Number.isFinite(ts) ? Math.trunc(ts) : 0;
  if (ms !== lastMs) {
    lastIso = new Date(ms).toISOString();
    lastMs = ms;
  }
  return lastIso;
}

/** A TCP connection as seen from the server: client (src) ↔ server (dst); the row's own fields. */
export type { Tuple };

/** Fingerprints of a ClientHello, computed upstream. */
export interface HelloFacts {
  ja4: string;
  ja4_r: string;
  tls_server_name: string;
}

export interface CorrelatorOptions {
  /** Value of Row.host (this machine's name). */
  host: string;
  /** How long a request waits for missing packet facts before it ships without them (ms). */
  holdMs: number;
  /**
   * Whether SYNs are captured at all: rows without JA4T are counted then (rows_missing_ja4t). No row waits
   * for one: the kernel side hands a connection's SYN over with its first read, before its first request.
   */
  expectJa4t: boolean;
  /** Whether ClientHellos are captured at all; when false rows never wait for JA4. */
  expectJa4: boolean;
  /** LRU cap on tracked connections. */
  maxConnections: number;
  /** Idle time after which a connection is forgotten (ms). */
  idleTtlMs: number;
  /** How long a closed connection is kept for late request events (ms); at least holdMs. */
  closeLingerMs: number;
  /**
   * Events of a connection arrive in the order they happened (one ring buffer; not per-CPU perf buffers): a
   * closed connection without held rows can have no late event, so it is forgotten at once instead of
   * lingering. With one connection per request this keeps its state short-lived (collected young).
   */
  orderedEvents: boolean;
  /** Cap on rows held at once; beyond it the oldest is released early. */
  maxHeldRows: number;
}

export const DEFAULT_CORRELATOR_OPTIONS: CorrelatorOptions = {
  host: "",
  holdMs: 2_000,
  expectJa4t: true,
  expectJa4: true,
  maxConnections: 65_536,
  idleTtlMs: 120_000,
  closeLingerMs: 5_000,
  orderedEvents: false,
  maxHeldRows: 50_000,
};

/** Counters; all monotonic except the three gauges (connections, bindings, held). */
export interface CorrelatorStats {
  /**
   * Gauges. `connections` counts those whose state rides on their request stream too (onStreamRequest).
   */
  connections: number;
  bindings: number;
  held: number;
  /** Inputs. */
  syns: number;
  hellos: number;
  requests: number;
  closes: number;
  /** Inputs ignored because a field was malformed (bad port, empty address…). */
  invalid_input: number;
  /** Requests with no usable tuple and no (pid, fd) binding: their rows carry an empty tuple. */
  requests_without_tuple: number;
  /** Rows out; emitted = immediate + released_facts + released_timeout + released_evicted + released_overflow. */
  rows_emitted: number;
  /** Shipped at once: every expected fact was already there (or known to be missing). */
  rows_immediate: number;
  /** Held, then released early when the missing facts arrived. */
  rows_released_facts: number;
  /** Held for holdMs (or, per-CPU buffers, a reader round after their own), released without some facts. */
  rows_released_timeout: number;
  /** Released because their connection was evicted or flushed. */
  rows_released_evicted: number;
  /** Released because maxHeldRows was reached. */
  rows_released_overflow: number;
  /** Emitted rows lacking JA4T / lacking JA4 although they were expected. */
  rows_missing_ja4t: number;
  rows_missing_ja4: number;
  /** Connections forgotten, by reason. */
  evicted_lru: number;
  evicted_ttl: number;
  evicted_closed: number;
  /** A SYN on a tuple already in use: the old connection's facts were replaced (port reuse). */
  tuple_reused: number;
  /** Connections found closed because their (pid, fd) carried another connection (their close record lost). */
  evicted_fd_reused: number;
  /** Gauge: SYNs nothing else of their connection was seen after yet (no state made for them). */
  syns_pending: number;
  /** SYNs no request or ClientHello followed before the idle time, or before maxConnections newer SYNs. */
  syns_unanswered: number;
  /** Connections whose state rode on their request stream (onStreamRequest), not in the maps. */
  on_streams: number;
}

/** A connection's state. */
interface Conn {
  key: ConnKey;
  tuple: Tuple | null;
  /** pidFdKey(pid, fd) of the socket bound to it. */
  pidfd: number | null;
  ja4t: string;
  hello: HelloFacts | null;
  /** Upstream said the first payload was not TLS. */
  plaintext: boolean;
  /** A row on it already timed out waiting: later rows on it do not wait again. */
  gaveUp: boolean;
  /** Rows of `held` already released (compacted away lazily). */
  heldDone: number;
  requests: number;
  lastSeen: number;
  closedAt: number;
  /** Held rows of this connection, oldest first. */
  held: Held[];
  /** Kept in its request stream's slot (onStreamRequest), not in the maps. */
  onStream: boolean;
}

interface Held {
  conn: Conn;
  /** The reader's round (endOfRound calls) when the request arrived. */
  round: number;
  pid: number;
  row: Row;
  /** false: a plain-HTTP connection (no ClientHello will come); true or undefined: waits for one. */
  tls: boolean | undefined;
  ts: number;
  deadline: number;
  done: boolean;
}

/** The held rows of a connection that has none (most): shared, never written. */
const NO_ROWS: Row[] = [];
const NO_HELD: Held[] = [];

const ZERO_STATS = (): CorrelatorStats => ({
  connections: 0,
  bindings: 0,
  held: 0,
  syns: 0,
  hellos: 0,
  requests: 0,
  closes: 0,
  invalid_input: 0,
  requests_without_tuple: 0,
  rows_emitted: 0,
  rows_immediate: 0,
  rows_released_facts: 0,
  rows_released_timeout: 0,
  rows_released_evicted: 0,
  rows_released_overflow: 0,
  rows_missing_ja4t: 0,
  rows_missing_ja4: 0,
  evicted_lru: 0,
  evicted_ttl: 0,
  evicted_closed: 0,
  tuple_reused: 0,
  evicted_fd_reused: 0,
  syns_pending: 0,
  syns_unanswered: 0,
  on_streams: 0,
});

function validPort(p: unknown): p is number {
  return typeof p === "number" && Number.isInteger(p) && p >= 0 && p <= 65535;
}

function validTuple(t: Tuple | null | undefined): t is Tuple {
  return !!t && typeof t.src === "string" && t.src !== "" && typeof t.dst === "string" && t.dst !== "" &&
    validPort(t.src_port) && validPort(t.dst_port);
}

/** (pid, fd) as one exact number (a number key hashes for free; a template string is built and hashed). */
function pidFdKey(pid: number, fd: number): number {
  // pid < 2^22 (PID_MAX_LIMIT), fd < 2^31: below 2^53, exact.
  return pid * 2147483648 + (fd & 0x7fffffff);
}

/** A request's (pid, fd) as its key, or null when it names no socket. */
function requestPidFd(pid: number, fd: number): number | null {
  return Number.isInteger(pid) && Number.isInteger(fd) && fd >= 0 ? pidFdKey(pid, fd) : null;
}

export class Correlator {
  readonly opts: CorrelatorOptions;
  /** LRU order: Map iteration order is insertion order, and every touch re-inserts. */
  #conns: LruMap<ConnKey, Conn>;
  /** (pid, fd) → connection key. */
  #bindings = new NumMap<ConnKey>();
  /** Held rows, in deadline order (holdMs is constant and the clock is made monotonic). */
  #heldQueue: Held[] = [];
  #heldHead = 0;
  #held = 0;
  /** Closed connections, in close order, to forget after closeLingerMs. */
  /**
   * Closed connections by key and close time, in close order, to forget after closeLingerMs. Keys, not the
   * Conn objects: a connection evicted meanwhile is not kept alive by this queue.
   */
  #closing: { key: ConnKey; at: number; round: number; counted: boolean }[] = [];
  #closingHead = 0;
  /** Rows released since the last tick. */
  #ready: Row[] = [];
  #now = 0;
  /** JA4Ts of connections not seen beyond their SYN: their state is made at their first request or hello. */
  #syns: PendingSyns;
  /**
   * The SYN the latest first read brought: its request follows at once (the same event) and takes it here,
   * without the ring's index. A SYN not taken before the next one arrives moves to the ring.
   */
  #synKey: ConnKey | undefined = undefined;
  #synJa4t = "";
  #synAt = 0;
  /** Connections whose state is in their stream's slot now (onStreamRequest), not in the maps. */
  #onStreams = 0;
  /** Reader rounds ended so far (endOfRound). */
  #round = 0;
  #s = ZERO_STATS();

  constructor(opts: Partial<CorrelatorOptions> = {}) {
    this.opts = { ...DEFAULT_CORRELATOR_OPTIONS, ...opts };
    if (this.opts.closeLingerMs < this.opts.holdMs) this.opts.closeLingerMs = this.opts.holdMs;
    if (!(this.opts.maxConnections >= 1)) throw new RangeError("maxConnections must be ≥ 1");
    if (!(this.opts.maxHeldRows >= 1)) throw new RangeError("maxHeldRows must be ≥ 1");
    if (!(this.opts.holdMs >= 0)) throw new RangeError("holdMs must be ≥ 0");
    this.#syns = new PendingSyns(this.opts.maxConnections);
    this.#conns = new LruMap(this.opts.maxConnections, Infinity, (_k, c) => {
      this.#evict(c);
      this.#s.evicted_lru++;
    });
  }

  #clock(ts: number): number {
    if (Number.isFinite(ts) && ts > this.#now) this.#now = ts;
    return this.#now;
  }

  #touch(c: Conn, now: number): void {
    c.lastSeen = now;
    this.#conns.get(c.key);
  }

  /** A connection's state, with the SYN taken for it; in the maps unless `onStream` (see onStreamRequest). */
  #newConn(key: ConnKey, tuple: Tuple | null, now: number, onStream = false): Conn {
    const c: Conn = {
      key,
      tuple,
      pidfd: null,
      ja4t: "",
      hello: null,
      plaintext: false,
      gaveUp: false,
      heldDone: 0,
      requests: 0,
      lastSeen: now,
      closedAt: 0,
      held: NO_HELD,
      onStream: false,
    };
    if (tuple !== null) {
      if (key === this.#synKey) {
        c.ja4t = this.#synJa4t;
        this.#synKey = undefined;
      } else c.ja4t = this.#syns.take(key) ?? "";
    }
    if (onStream) c.onStream = true;
    else this.#conns.set(key, c); // evicts the least recently used past maxConnections
    return c;
  }

  /** The tuple's own copy, addresses normalized (field by field: the tuple passed may be a whole row). */
  #ownTuple(t: Tuple): Tuple {
    return { src: normAddr(t.src), src_port: t.src_port, dst: normAddr(t.dst), dst_port: t.dst_port };
  }

  #connForTuple(t: Tuple, now: number): Conn {
    const key = connKeyOf(t);
    const c = this.#conns.peek(key);
    if (c) {
      this.#touch(c, now);
      return c;
    }
    return this.#newConn(key, this.#ownTuple(t), now);
  }

  /** The SYN in hand, not taken by a request, into the ring (where it waits or ages out). */
  #parkSyn(): void {
    if (this.#synKey === undefined) return;
    this.#syns.add(this.#synKey, this.#synJa4t, this.#synAt);
    this.#synKey = undefined;
  }

  /** Forgets a connection; its held rows are released at once (never lost). */
  #evict(c: Conn): void {
    this.#conns.delete(c.key);
    if (c.pidfd !== null && this.#bindings.get(c.pidfd) === c.key) this.#bindings.delete(c.pidfd);
    for (const h of c.held) {
      if (h.done) continue;
      this.#release(h);
      this.#s.rows_released_evicted++;
    }
    c.held = NO_HELD;
    c.heldDone = 0;
  }

  /** Every expected packet fact is there (or known never to come). JA4T came with the first read or never. */
  #complete(c: Conn, tls: boolean | undefined): boolean {
    if (c.gaveUp) return true;
    return !(this.opts.expectJa4 && tls !== false && !c.plaintext && c.hello === null);
  }

  /**
   * Whether the connection's packet facts are all it will ever have. With ordered events (one ring buffer)
   * they precede its requests: tc reports a ClientHello before the server can read it (and the SYN comes
   * with the first read), so a fact missing when a request arrives was lost (a full ring, a connection older
   * than the agent, an interface without tc) and holding the row would only delay it and hold its memory —
   * at the ring's overflow, when the agent is already behind, 50,000 rows of it. A request without a tuple
   * still waits for the bind that supplies one.
   */
  #final(c: Conn): boolean {
    return this.opts.orderedEvents && c.tuple !== null;
  }

  /** Completes the request's row in place with the connection's facts (no copy). */
  #fill(c: Conn, pid: number, row: Row, ts: number): Row {
    const t = c.tuple, hello = c.hello;
    row.ts = isoMs(ts);
    row.host = this.opts.host;
    row.pid = pid;
    if (t !== null) {
      row.src = t.src;
      row.src_port = t.src_port;
      row.dst = t.dst;
      row.dst_port = t.dst_port;
    } else {
      row.src = "";
      row.src_port = 0;
      row.dst = "";
      row.dst_port = 0;
    }
    if (hello !== null) {
      row.ja4 = hello.ja4;
      row.ja4_r = hello.ja4_r;
      row.tls_server_name = hello.tls_server_name;
    }
    row.ja4t = c.ja4t;
    return row;
  }

  #emit(c: Conn, pid: number, row: Row, ts: number, tls: boolean | undefined): void {
    if (this.opts.expectJa4t && c.ja4t === "") this.#s.rows_missing_ja4t++;
    if (this.opts.expectJa4 && tls !== false && !c.plaintext && c.hello === null) {
      this.#s.rows_missing_ja4++;
    }
    this.#s.rows_emitted++;
    this.#ready.push(this.#fill(c, pid, row, ts));
  }

  #release(h: Held): void {
    h.done = true;
    this.#held--;
    this.#emit(h.conn, h.pid, h.row, h.ts, h.tls);
  }

  /** Releases a connection's held rows whose facts are now complete (in order). */
  #recheck(c: Conn): void {
    if (c.held.length === 0) return;
    const keep: Held[] = [];
    for (const h of c.held) {
      if (h.done) continue;
      if (this.#complete(c, h.tls)) {
        this.#release(h);
        this.#s.rows_released_facts++;
      } else keep.push(h);
    }
    c.held = keep;
    c.heldDone = 0;
  }

  /**
   * JA4T of the connection's client SYN. The kernel side hands it over with the server's first read of the
   * connection, before that read's requests and after the ClientHello tc saw: a connection on the tuple that
   * already has requests, a close or a SYN is an earlier one (the port was reused).
   */
  onSyn(tuple: Tuple, ja4t: string, ts: number): void {
    const now = this.#clock(ts);
    if (!validTuple(tuple) || typeof ja4t !== "string") {
      this.#s.invalid_input++;
      return;
    }
    this.#s.syns++;
    const key = connKeyOf(tuple);
    let c = this.#conns.peek(key);
    if (c && (c.requests > 0 || c.closedAt > 0 || c.ja4t !== "")) {
      this.#s.tuple_reused++;
      this.#evict(c);
      c = undefined;
    }
    if (c === undefined) {
      // Its first request follows at once and takes it (no state made here for it).
      this.#parkSyn();
      this.#synKey = key;
      this.#synJa4t = ja4t;
      this.#synAt = now;
      return;
    }
    this.#touch(c, now);
    c.ja4t = ja4t;
    this.#recheck(c);
  }

  /** JA4 facts of the connection's ClientHello. */
  onClientHello(tuple: Tuple, fp: HelloFacts, ts: number): void {
    const now = this.#clock(ts);
    if (!validTuple(tuple) || !fp || typeof fp.ja4 !== "string") {
      this.#s.invalid_input++;
      return;
    }
    this.#s.hellos++;
    const c = this.#connForTuple(tuple, now);
    c.hello = { ja4: fp.ja4, ja4_r: fp.ja4_r ?? "", tls_server_name: fp.tls_server_name ?? "" };
    c.plaintext = false;
    this.#recheck(c);
  }

  /** Whether the connection's ClientHello facts are in (the request side need not parse its copy). */
  hasHello(key: ConnKey): boolean {
    const c = this.#conns.peek(key);
    return c !== undefined && c.hello !== null;
  }

  /** The packet side saw the connection's first client payload and it was not a TLS handshake. */
  onPlaintext(tuple: Tuple, ts: number): void {
    const now = this.#clock(ts);
    if (!validTuple(tuple)) {
      this.#s.invalid_input++;
      return;
    }
    const c = this.#connForTuple(tuple, now);
    if (c.hello === null) c.plaintext = true;
    this.#recheck(c);
  }

  /** Associates a process's socket with its tuple (e.g. from accept): later requests may omit the tuple. */
  bind(tuple: Tuple, pid: number, fd: number, ts: number): void {
    const now = this.#clock(ts);
    if (!validTuple(tuple) || !Number.isInteger(pid) || !Number.isInteger(fd)) {
      this.#s.invalid_input++;
      return;
    }
    const c = this.#connForTuple(tuple, now);
    this.#bindTo(c, pidFdKey(pid, fd));
  }

  #bindTo(c: Conn, pidfd: number): void {
    const prevKey = this.#bindings.get(pidfd);
    if (prevKey === c.key) return;
    if (prevKey !== undefined) {
      const prev = this.#conns.peek(prevKey);
      if (prev && prev.tuple === null) {
        // Requests seen before the tuple was known: adopt them.
        for (const h of prev.held) if (!h.done) h.conn = c;
        if (c.held === NO_HELD) c.held = [];
        c.held.push(...prev.held.filter((h) => !h.done));
        c.requests += prev.requests;
        prev.held = [];
        prev.heldDone = 0;
        this.#conns.delete(prev.key);
      } else if (prev && prev.pidfd === pidfd) {
        // The fd now holds another connection, so the one it held was closed: its close record was lost (a
        // full ring). Forgotten as at a close, not left for the LRU 65,536 connections later.
        prev.pidfd = null;
        this.#s.evicted_fd_reused++;
        this.#closed(prev, this.#now, false);
      }
    }
    if (c.pidfd !== null && c.pidfd !== pidfd && this.#bindings.get(c.pidfd) === c.key) {
      this.#bindings.delete(c.pidfd);
    }
    c.pidfd = pidfd;
    this.#bindings.set(pidfd, c.key);
    this.#recheck(c);
  }

  /**
   * A request of a stream the request tracker keeps: as onRequest, but a plain-HTTP connection's state rides
   * in the stream's slot (`st.facts`) instead of the maps when nothing but its stream will look for it —
   * ordered events (its SYN came with its first read, no ClientHello will come), and no state yet for its
   * tuple or its (pid, fd). Its rows go out at once; its later requests find it in the slot without a lookup,
   * and its close (onClose with the slot's value) or its stream's eviction forgets it. With one connection per
   * request this saves a connection's inserts and deletes in two maps; with keep-alive, a lookup per request.
   */
  onStreamRequest(st: ConnTuple, pid: number, fd: number, req: Row, ts: number, tls: boolean): void {
    const own = st.facts as Conn | undefined;
    if (own !== undefined) {
      const now = this.#clock(ts);
      this.#s.requests++;
      own.lastSeen = now;
      own.requests++;
      this.#s.rows_immediate++;
      this.#emit(own, pid, req, ts, tls);
      return;
    }
    const tuple = st.src_port !== 0 ? st : null;
    const pidfd = requestPidFd(pid, fd);
    if (
      tls || !this.opts.orderedEvents || tuple === null || !validTuple(tuple) || pidfd === null ||
      this.#conns.peek(st.connKey) !== undefined || this.#bindings.get(pidfd) !== undefined
    ) {
      this.onRequest(tuple, pid, fd, req, ts, tls);
      return;
    }
    const now = this.#clock(ts);
    this.#s.requests++;
    this.#s.on_streams++;
    this.#onStreams++;
    const c = this.#newConn(st.connKey, this.#ownTuple(st), now, true);
    c.requests = 1;
    st.facts = c;
    this.#s.rows_immediate++;
    this.#emit(c, pid, req, ts, tls);
  }

  /**
   * One HTTP request: `req` is its row with the request-side fields filled; the correlator completes it in
   * place with the connection's facts and emits it. `tuple` may be null when the request side only knows
   * (pid, fd); the connection is then found through an earlier bind() or request with a tuple on the same
   * (pid, fd). `tls`: false for a plain-HTTP connection (its row need not wait for a ClientHello).
   */
  onRequest(
    tuple: Tuple | null,
    pid: number,
    fd: number,
    req: Row,
    ts: number,
    tls?: boolean,
  ): void {
    const now = this.#clock(ts);
    if (!req || typeof req !== "object") {
      this.#s.invalid_input++;
      return;
    }
    this.#s.requests++;
    const pidfd = requestPidFd(pid, fd);
    let c: Conn | undefined;
    if (tuple !== null && validTuple(tuple)) {
      c = this.#connForTuple(tuple, now);
      if (pidfd !== null) this.#bindTo(c, pidfd);
    } else {
      if (tuple !== null) this.#s.invalid_input++;
      const key = pidfd !== null ? this.#bindings.get(pidfd) : undefined;
      c = key !== undefined ? this.#conns.peek(key) : undefined;
      if (c) this.#touch(c, now);
      else if (pidfd !== null) {
        // No tuple yet: track under the (pid, fd) key until bind() supplies it.
        const k = `fd:${pidfd}`;
        c = this.#conns.peek(k) ?? this.#newConn(k, null, now);
        this.#touch(c, now);
        c.pidfd = pidfd;
        this.#bindings.set(pidfd, k);
      } else {
        // Neither tuple nor (pid, fd): nothing can ever join it, ship it as it is.
        this.#s.requests_without_tuple++;
        this.#s.rows_immediate++;
        const lone: Conn = {
          key: "",
          tuple: null,
          pidfd: null,
          ja4t: "",
          hello: null,
          plaintext: false,
          gaveUp: true,
          heldDone: 0,
          requests: 1,
          lastSeen: now,
          closedAt: 0,
          held: NO_HELD,
          onStream: false,
        };
        this.#emit(lone, Number.isInteger(pid) ? pid : 0, req, ts, tls);
        return;
      }
      if (c.tuple === null) this.#s.requests_without_tuple++;
    }
    c.requests++;
    const safePid = Number.isInteger(pid) ? pid : 0;
    // Keep per-connection order: a request never overtakes an earlier held one.
    if (c.held.length === 0 && (this.#complete(c, tls) || this.opts.holdMs === 0 || this.#final(c))) {
      this.#s.rows_immediate++;
      this.#emit(c, safePid, req, ts, tls);
      return;
    }
    const h: Held = {
      conn: c,
      round: this.#round,
      pid: safePid,
      row: req,
      tls,
      ts,
      deadline: now + this.opts.holdMs,
      done: false,
    };
    if (c.held === NO_HELD) c.held = [];
    c.held.push(h);
    this.#heldQueue.push(h);
    this.#held++;
    while (this.#held > this.opts.maxHeldRows) this.#releaseOldest();
  }

  #releaseOldest(): void {
    while (this.#heldHead < this.#heldQueue.length) {
      const h = this.#heldQueue[this.#heldHead++];
      if (h.done) continue;
      this.#release(h);
      h.conn.held = h.conn.held.filter((x) => !x.done);
      h.conn.heldDone = 0;
      this.#s.rows_released_overflow++;
      return;
    }
  }

  /** A request stream went without its close (evicted, idle, its fd reused): what onStreamRequest kept in its slot. */
  streamGone(facts: unknown): void {
    if ((facts as Conn).onStream === true) this.#onStreams--;
  }

  /**
   * The socket was closed (by pid/fd, by tuple, or both). The (pid, fd) binding goes at once (fds are
   * reused); the connection lingers for late events, then is forgotten. `streamFacts`: what onStreamRequest
   * left in the closed stream's slot.
   */
  onClose(tuple: Tuple | null, pid: number, fd: number, ts: number, streamFacts?: unknown): void {
    const now = this.#clock(ts);
    this.#s.closes++;
    if ((streamFacts as Conn | undefined)?.onStream === true) {
      // Its state rode on its stream, which the tracker dropped: nothing of it is in the maps.
      this.#onStreams--;
      this.#s.evicted_closed++;
      return;
    }
    let c: Conn | undefined;
    if (tuple !== null && validTuple(tuple)) {
      const key = connKeyOf(tuple);
      c = this.#conns.peek(key);
      if (c === undefined) {
        if (key === this.#synKey) this.#synKey = undefined;
        else this.#syns.delete(key);
      }
    }
    const pidfd = Number.isInteger(pid) && Number.isInteger(fd) ? pidFdKey(pid, fd) : null;
    if (pidfd !== null) {
      const key = this.#bindings.get(pidfd);
      if (key !== undefined) {
        c ??= this.#conns.peek(key);
        this.#bindings.delete(pidfd);
      }
    }
    if (!c) return;
    if (c.pidfd === pidfd) c.pidfd = null;
    this.#closed(c, now, true);
  }

  /**
   * A closed connection: forgotten at once when nothing of it can still come (ordered events, no held rows),
   * else after its linger. `counted`: an eviction now counts as closed (the caller counted an inferred one).
   */
  #closed(c: Conn, now: number, counted: boolean): void {
    if (this.opts.orderedEvents && c.held.length === c.heldDone) {
      this.#evict(c);
      if (counted) this.#s.evicted_closed++;
      return;
    }
    if (c.closedAt === 0) {
      c.closedAt = now;
      this.#closing.push({ key: c.key, at: now, round: this.#round, counted });
    }
  }

  /**
   * The reader has read every buffer once more (per-CPU perf buffers: one poll). A fact is written before
   * its connection's requests, on its own CPU's buffer: a reader that found the request in one round finds
   * the fact in that round or the next, never later. Rows held through a whole round after their own were
   * waiting for a fact that was lost (a full buffer, a connection older than the agent): they go now, not
   * at the end of the hold, which at the buffers' overflow would keep tens of thousands of rows. Connections
   * closed a whole round ago are forgotten for the same reason (no late event of theirs can still come).
   */
  endOfRound(): void {
    this.#round++;
    this.#releaseHeld(this.#now, this.#round - 2);
    this.#forgetClosed(this.#now, this.#round - 2); // after their rows: nothing of theirs waits now
  }

  /**
   * The rows completed since the last call (or tick), without advancing time: the agent takes them after
   * every ring batch, so rows reach the sinks while they are young (cheap for the garbage collector).
   */
  takeReady(): Row[] {
    if (this.#ready.length === 0) return NO_ROWS;
    const out = this.#ready;
    this.#ready = [];
    return out;
  }

  /** Advances time: releases rows whose hold expired and forgets idle/closed connections. */
  tick(now: number): Row[] {
    now = this.#clock(now);
    this.#releaseHeld(now, -1);
    this.#compactQueues();
    this.#forgetClosed(now, -1);
    this.#parkSyn();
    this.#syns.expire(now, this.opts.idleTtlMs);
    // Idle connections: the LRU head is the least recently seen.
    for (let n = this.#conns.oldest(); n !== undefined; n = this.#conns.oldest()) {
      if (n.value.lastSeen + this.opts.idleTtlMs > now) break;
      this.#evict(n.value);
      this.#s.evicted_ttl++;
    }
    const out = this.#ready;
    this.#ready = [];
    return out;
  }

  /**
   * Ships, without the missing facts, the held rows whose hold ended by `now` or that arrived in a reader
   * round ≤ `round` (oldest first: the queue is in arrival order, so in deadline and round order too).
   */
  #releaseHeld(now: number, round: number): void {
    while (this.#heldHead < this.#heldQueue.length) {
      const h = this.#heldQueue[this.#heldHead];
      if (!h.done) {
        if (h.deadline > now && h.round > round) break;
        this.#release(h);
        h.conn.gaveUp = true;
        this.#s.rows_released_timeout++;
        // Released rows leave conn.held lazily: compacting on every release is quadratic when one
        // connection has thousands of held rows (a keep-alive flood without its SYN).
        if (++h.conn.heldDone * 2 > h.conn.held.length) {
          h.conn.held = h.conn.held.filter((x) => !x.done);
          h.conn.heldDone = 0;
        }
      }
      this.#heldHead++;
    }
  }

  /**
   * Forgets closed connections past their linger, or closed in a reader round ≤ `round` (their late events are
   * in); beyond maxConnections of them the oldest go early (they could not all be tracked anyway, and the
   * queue stays bounded at any close rate).
   */
  #forgetClosed(now: number, round: number): void {
    while (this.#closingHead < this.#closing.length) {
      const e = this.#closing[this.#closingHead];
      const over = this.#closing.length - this.#closingHead > this.opts.maxConnections;
      if (!over && e.at + this.opts.closeLingerMs > now && e.round > round) break;
      this.#closingHead++;
      const conn = this.#conns.peek(e.key);
      if (conn !== undefined && conn.closedAt === e.at) {
        this.#evict(conn);
        if (e.counted) this.#s.evicted_closed++;
      }
    }
  }

  #compactQueues(): void {
    if (this.#heldHead > 1024 && this.#heldHead * 2 > this.#heldQueue.length) {
      this.#heldQueue = this.#heldQueue.slice(this.#heldHead);
      this.#heldHead = 0;
    }
    if (this.#closingHead > 1024 && this.#closingHead * 2 > this.#closing.length) {
      this.#closing = this.#closing.slice(this.#closingHead);
      this.#closingHead = 0;
    }
  }

  /** Releases every held row now (shutdown); returns all rows not yet returned. */
  flush(): Row[] {
    while (this.#heldHead < this.#heldQueue.length) {
      const h = this.#heldQueue[this.#heldHead++];
      if (h.done) continue;
      this.#release(h);
      h.conn.held = [];
      h.conn.heldDone = 0;
      this.#s.rows_released_evicted++;
    }
    this.#heldQueue = [];
    this.#heldHead = 0;
    const out = this.#ready;
    this.#ready = [];
    return out;
  }

  /** Tracked state: connections plus (pid, fd) bindings plus held rows plus internal queue lengths. */
  stateSize(): number {
    return this.#conns.size + this.#bindings.size + this.#held;
  }

  /** Internal queue lengths (tests check they stay bounded). */
  queueLengths(): { held: number; closing: number } {
    return {
      held: this.#heldQueue.length - this.#heldHead,
      closing: this.#closing.length - this.#closingHead,
    };
  }

  stats(): CorrelatorStats {
    return {
      ...this.#s,
      connections: this.#conns.size + this.#onStreams,
      bindings: this.#bindings.size,
      held: this.#held,
      syns_pending: this.#syns.size + (this.#synKey === undefined ? 0 : 1),
      syns_unanswered: this.#syns.dropped,
    };
  }
}
