/**
 * An HTTP/1.1 proxy in front of the test ClickHouse that injects the faults a real server cannot show: an
 * answer lost after the server committed (a proxy's 502/504, a hang until the client's timeout, a reset), a
 * refusal without a ClickHouse code (413, 400), a connection cut in the middle of the request body.
 * One request per connection (`Connection: close`); requests are forwarded with fetch. Rules are tried in
 * order; a rule with `times` is used that many times, then skipped.
 */
import { concatBytes } from "../../src/parse/bytes.ts";

export interface ProxyRequest {
  method: string;
  /** The `query` URL parameter (INSERTs), else the body (SELECTs, DESCRIBE), as text. */
  sql: string;
}

export type FaultAction =
  /** Forward and relay the answer. */
  | { kind: "pass" }
  /** Answer this without forwarding. */
  | { kind: "reply"; status: number; body?: string }
  /** Forward (the server commits), then answer this instead of the server's answer. */
  | { kind: "after"; status: number; body?: string }
  /** Forward, then never answer (the client's timeout fires). */
  | { kind: "hang" }
  /** Forward, then close the connection without an answer. */
  | { kind: "reset" }
  /** Read the head and part of the body, then close: nothing reaches the server. */
  | { kind: "cut" }
  /** Wait for the promise, then forward. */
  | { kind: "gate"; until: Promise<void> };

export interface FaultRule {
  match: (r: ProxyRequest) => boolean;
  action: FaultAction;
  times?: number;
}

export const isInsert = (r: ProxyRequest) => r.sql.startsWith("INSERT");
export const isReadBack = (r: ProxyRequest) => /^SELECT count\(\) FROM (?!system)/.test(r.sql);

export interface FaultProxy {
  url: string;
  rules: FaultRule[];
  /** Every request seen, with the action taken. */
  seen: { sql: string; action: FaultAction["kind"] }[];
  close(): Promise<void>;
}

const HEAD_END = new TextEncoder().encode("\r\n\r\n");

function indexOf(hay: Uint8Array, needle: Uint8Array, from = 0): number {
  outer: for (let i = from; i + needle.length <= hay.length; i++) {
    for (let j = 0; j < needle.length; j++) if (hay[i + j] !== needle[j]) continue outer;
    return i;
  }
  return -1;
}

const REASONS: Record<number, string> = {
  200: "OK",
  400: "Bad Request",
  404: "Not Found",
  413: "Payload Too Large",
  500: "Internal Server Error",
  502: "Bad Gateway",
  503: "Service Unavailable",
  504: "Gateway Timeout",
};

export function startFaultProxy(upstream: string): FaultProxy {
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const conns = new Set<Deno.Conn>();
  const held = new Set<() => void>();
  const p: FaultProxy = {
    url: `http://127.0.0.1:${(l.addr as Deno.NetAddr).port}`,
    rules: [],
    seen: [],
    async close() {
      l.close();
      for (const r of held) r();
      for (const c of conns) {
        try {
          c.close();
        } catch { /* closed */ }
      }
      await Promise.resolve();
    },
  };

  const write = async (c: Deno.Conn, b: Uint8Array) => {
    let off = 0;
    while (off < b.length) off += await c.write(b.subarray(off));
  };
  const answer = async (c: Deno.Conn, status: number, body: Uint8Array, headers: [string, string][] = []) => {
    const head = `HTTP/1.1 ${status} ${REASONS[status] ?? "Status"}\r\n` +
      headers.map(([k, v]) => `${k}: ${v}\r\n`).join("") +
      `Content-Length: ${body.length}\r\nConnection: close\r\n\r\n`;
    await write(c, concatBytes([new TextEncoder().encode(head), body]));
  };

  const handle = async (c: Deno.Conn) => {
    conns.add(c);
    try {
      // Head.
      let buf: Uint8Array<ArrayBufferLike> = new Uint8Array(0);
      const chunk = new Uint8Array(65536);
      let end = -1;
      while ((end = indexOf(buf, HEAD_END)) < 0) {
        const n = await c.read(chunk);
        if (n === null) return;
        buf = concatBytes([buf, chunk.subarray(0, n)]);
      }
      const head = new TextDecoder().decode(buf.subarray(0, end));
      const [reqLine, ...hl] = head.split("\r\n");
      const [method, target] = reqLine.split(" ");
      const headers = new Headers();
      for (const h of hl) {
        const i = h.indexOf(":");
        if (i > 0) headers.append(h.slice(0, i).trim(), h.slice(i + 1).trim());
      }
      const length = Number(headers.get("content-length") ?? "0");
      let body = buf.subarray(end + 4);
      const query = new URL(target, "http://x").searchParams.get("query") ?? "";
      const gz = (headers.get("content-encoding") ?? "") !== "";
      // The SQL is known from the URL for INSERTs; other statements are in the body (read it first).
      const rule = () => {
        const req: ProxyRequest = { method, sql: query || (gz ? "" : new TextDecoder().decode(body)) };
        const r = p.rules.find((r) => (r.times === undefined || r.times > 0) && r.match(req));
        if (r && r.times !== undefined) r.times--;
        const action: FaultAction = r?.action ?? { kind: "pass" };
        p.seen.push({ sql: req.sql, action: action.kind });
        return action;
      };
      if (query) {
        const peek: ProxyRequest = { method, sql: query };
        const r = p.rules.find((r) => (r.times === undefined || r.times > 0) && r.match(peek));
        if (r?.action.kind === "cut") {
          if (r.times !== undefined) r.times--;
          p.seen.push({ sql: query, action: "cut" });
          return; // closed in finally, with most of the body unread: the client sees a reset
        }
      }
      while (body.length < length) {
        const n = await c.read(chunk);
        if (n === null) return;
        body = concatBytes([body, chunk.subarray(0, n)]);
      }
      const action = rule();
      if (action.kind === "cut") return;
      if (action.kind === "reply") {
        await answer(c, action.status, new TextEncoder().encode(action.body ?? ""));
        return;
      }
      if (action.kind === "gate") await action.until;
      const fwd = new Headers();
      for (const [k, v] of headers) {
        if (!["host", "content-length", "connection", "keep-alive"].includes(k.toLowerCase())) fwd.set(k, v);
      }
      const res = await fetch(`${upstream}${target}`, { method, headers: fwd, body: body.slice() });
      const resBody = new Uint8Array(await res.arrayBuffer());
      if (action.kind === "after") {
        await answer(c, action.status, new TextEncoder().encode(action.body ?? ""));
      } else if (action.kind === "hang") {
        // Until the client gives up (its read returns null) or the proxy closes.
        await new Promise<void>((resolve) => {
          held.add(resolve);
          c.read(chunk).then(() => resolve(), () => resolve());
        });
      } else if (action.kind === "reset") {
        return;
      } else {
        const keep: [string, string][] = [];
        for (const [k, v] of res.headers) {
          if (k.startsWith("x-clickhouse") || k === "content-type") keep.push([k, v]);
        }
        await answer(c, res.status, resBody, keep);
      }
    } catch {
      /* client went away */
    } finally {
      conns.delete(c);
      try {
        c.close();
      } catch { /* closed */ }
    }
  };

  (async () => {
    for await (const c of l) void handle(c);
  })().catch(() => {});
  return p;
}
