/**
 * Decryption of one TLS connection of a capture: both directions go through a TlsDecryptor until the
 * server's first application data (the handshake is then over and responses are not needed); the client's
 * plaintext goes to the HTTP/2 parser (ALPN h2 or the connection preface) or the HTTP/1 parser, and its
 * requests are handed to the host. Only a record, a frame or a request head is ever buffered.
 */
import { TlsDecryptor, type TlsDir, type TlsKeyLog } from "../parse/tls_decrypt.ts";
import { H2_PREFACE, type H2Request, Http2RequestStream } from "../parse/http2.ts";
import { Http1RequestStream, type RequestHead } from "../parse/http1.ts";
import type { ErrorCounts } from "../parse/errors.ts";
import { concat, type ConnState, EMPTY, type Side } from "./conn.ts";
import type { OfflineStats } from "./fingerprint_capture.ts";

/** What decryption needs from the fingerprinter. */
export interface DecryptHost {
  readonly stats: OfflineStats;
  /** Stops reading a side. */
  detach(side: Side): void;
  /** An HTTP/1 request the client sent inside TLS. */
  request(st: ConnState, side: Side, head: RequestHead): void;
  /** An HTTP/2 request the client sent inside TLS. */
  h2Request(st: ConnState, side: Side, q: H2Request): void;
}

/** TLS bytes held per connection while waiting for the ClientHello (a hello is a few KB). */
const HOLD_CAP = 256 * 1024;
/** Key-log labels that mean "secrets for this session" (TLS 1.2 master secret, TLS 1.3 traffic secrets). */
const SESSION_LABELS = ["CLIENT_RANDOM", "CLIENT_HANDSHAKE_TRAFFIC_SECRET", "CLIENT_TRAFFIC_SECRET_0"];

export function sumErrors(e: ErrorCounts): number {
  return e.truncated + e.malformed + e.oversize + e.unsupported;
}

export class ConnDecryption {
  /** Why decryption ended early, once it has. */
  ended: string | undefined;
  /** Created once the ClientHello tells which side is the client. */
  private dec: TlsDecryptor | null = null;
  /** TLS bytes of each side (A, B) held until then. */
  private held: [Uint8Array[], Uint8Array[]] = [[], []];
  private heldBytes = 0;
  private app?: { kind: "h2"; s: Http2RequestStream } | { kind: "h1"; s: Http1RequestStream };
  /** Client plaintext read before the protocol is known (shorter than the HTTP/2 preface). */
  private pre: Uint8Array = EMPTY;
  private plaintext = 0;

  constructor(
    private readonly host: DecryptHost,
    private readonly st: ConnState,
    private readonly keyLog: TlsKeyLog,
    /** Client bytes a decrypted stream may deliver (the client direction's reassembly cap is raised to it). */
    private readonly maxDecrypted: number,
  ) {}

  /** Hands one side's TLS bytes to the decryptor (held until the ClientHello says who is the client). */
  push(side: Side, bytes: Uint8Array): void {
    if (this.ended !== undefined) return;
    // The decryptor and the held lists keep chunks by reference; the caller's bytes are a transient view.
    bytes = bytes.slice();
    const st = this.st;
    if (this.dec) return this.feed(side.isA === st.clientSideA ? "client" : "server", bytes);
    this.held[side.isA ? 0 : 1].push(bytes);
    this.heldBytes += bytes.length;
    if (!st.clientHello) {
      // A ServerHello without a ClientHello (capture started mid-handshake): no client random, no keys.
      if (st.serverHello !== undefined || this.heldBytes > HOLD_CAP) this.end("no-client-hello");
      return;
    }
    this.dec = new TlsDecryptor(this.keyLog);
    const clientIdx = st.clientSideA ? 0 : 1;
    const held = this.held;
    this.held = [[], []];
    this.heldBytes = 0;
    for (const b of held[clientIdx]) this.feed("client", b);
    const cr = this.dec?.info.clientRandom;
    if (this.ended === undefined && cr && !SESSION_LABELS.some((l) => this.keyLog.get(l, cr))) {
      return this.end("no-keys"); // checked early so that nothing is held for nothing
    }
    const client = st.clientSideA ? st.a : st.b;
    client.dir.cap = Math.max(client.dir.cap, this.maxDecrypted);
    for (const b of held[1 - clientIdx]) this.feed("server", b);
  }

  private feed(dir: TlsDir, bytes: Uint8Array): void {
    const dec = this.dec;
    if (!dec || this.ended !== undefined) return;
    const st = this.st;
    dec.push(dir, bytes);
    if (dec.take("server").length > 0) {
      // The server sends application data only after its Finished: nothing more to learn from it.
      this.host.detach(st.clientSideA ? st.b : st.a);
    }
    const pt = dec.take("client");
    if (pt.length > 0) this.appData(pt);
    const stop = dec.stopped("client") ?? (this.plaintext === 0 ? dec.stopped("server") : undefined);
    if (stop !== undefined) this.end(stop);
  }

  /** Client plaintext: HTTP/2 (ALPN h2 or the connection preface) or HTTP/1. */
  private appData(bytes: Uint8Array): void {
    const { st, host } = this;
    if (this.plaintext === 0) host.stats.decrypted++;
    this.plaintext += bytes.length;
    const client = st.clientSideA ? st.a : st.b;
    if (!this.app) {
      if (this.dec?.info.alpn === "h2") this.app = { kind: "h2", s: new Http2RequestStream() };
      else {
        bytes = concat(this.pre, bytes);
        this.pre = EMPTY;
        let i = 0;
        while (i < bytes.length && i < H2_PREFACE.length && bytes[i] === H2_PREFACE[i]) i++;
        if (i === bytes.length && i < H2_PREFACE.length) {
          this.pre = bytes.slice(); // a prefix of the preface: wait for more
          return;
        }
        this.app = i === H2_PREFACE.length
          ? { kind: "h2", s: new Http2RequestStream() }
          : { kind: "h1", s: new Http1RequestStream() };
      }
    }
    const app = this.app;
    const errs = sumErrors(app.s.errors);
    if (app.kind === "h2") {
      for (const q of app.s.push(bytes)) host.h2Request(st, client, q);
      if (app.s.dropped) {
        // HPACK state is lost: later requests can't be decoded, so stop decrypting.
        this.end("http2-dropped");
      }
    } else {
      for (const head of app.s.push(bytes)) host.request(st, client, head);
    }
    host.stats.httpErrors += sumErrors(app.s.errors) - errs;
  }

  /** Decryption of this connection is over (a failure, or nothing more to gain). */
  end(reason: string): void {
    if (this.ended !== undefined) return;
    const { st, host } = this;
    this.ended = reason;
    this.dec = null;
    this.held = [[], []];
    this.heldBytes = 0;
    this.pre = EMPTY;
    if (this.plaintext === 0) {
      host.stats.undecryptable++;
      host.stats.undecryptableBy[reason] = (host.stats.undecryptableBy[reason] ?? 0) + 1;
    } else if (reason !== "http2-dropped") host.stats.tlsErrors++;
    // Sides that stayed attached only for decryption stop; one still looking for its hello carries on.
    for (const side of [st.a, st.b]) {
      if (side.mode.kind === "tls" && side.mode.helloDone) host.detach(side);
    }
  }
}
