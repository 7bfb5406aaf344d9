/** Per-connection state of the offline fingerprinter, shared by its modules. */
import type { TcpConnection, TcpDirection } from "../capture/tcp_reassembly.ts";
import type { ClientHello, ServerHello, TlsHandshakeReader } from "../parse/tls.ts";
import type { Http1RequestStream } from "../parse/http1.ts";
import type { SocksState } from "./socks.ts";
import type { ConnDecryption } from "./decrypt.ts";

export interface HttpRecord {
  ja4h: string;
  ja4h_r?: string;
  ja4h_o?: string;
  ja4h_ro?: string;
  method: string;
  path: string;
}

/** Sniffing/parsing state of one direction of one connection. */
export type Mode =
  | { kind: "sniff" }
  | { kind: "tls"; reader: TlsHandshakeReader; helloDone: boolean }
  | { kind: "http"; first: boolean; stream?: Http1RequestStream }
  | { kind: "http-response" }
  | ({ kind: "socks-client" } & SocksState)
  | ({ kind: "socks-server" } & SocksState);

export interface Side {
  mode: Mode;
  /** Bytes not yet consumed by sniff/socks/CONNECT handling (small: capped by SNIFF_CAP). */
  buf: Uint8Array;
  dir: TcpDirection;
  isA: boolean;
}

export interface ConnState {
  conn: TcpConnection;
  a: Side;
  b: Side;
  clientHello?: ClientHello;
  serverHello?: ServerHello;
  /** Which side sent the ClientHello / the first request (true = A). */
  clientSideA?: boolean;
  http: HttpRecord[];
  /** The client asked for a tunnel (CONNECT or SOCKS): the server's reply head is skipped, then sniffed. */
  connectSeen: boolean;
  socks?: 4 | 5;
  tlsDec?: ConnDecryption;
}

/** Shared, never written: a fresh Uint8Array(0) allocates a backing store each time. */
export const EMPTY = new Uint8Array(0);

export function concat(a: Uint8Array, b: Uint8Array): Uint8Array {
  if (a.length === 0) return b;
  if (b.length === 0) return a;
  const out = new Uint8Array(a.length + b.length);
  out.set(a);
  out.set(b, a.length);
  return out;
}
