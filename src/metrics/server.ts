/**
 * The metrics endpoint: GET /metrics (Prometheus text) and GET /healthz (200 "ok" / 503 with reasons, JSON
 * with ?format=json). Loopback by default; `enabled: false` serves nothing.
 */
import type { AgentMetrics } from "./agent.ts";

export const DEFAULT_METRICS_LISTEN = "127.0.0.1:9435";

export class ListenAddressError extends Error {
  constructor(readonly value: string, why: string) {
    super(`metrics listen address '${value}': ${why}`);
    this.name = "ListenAddressError";
  }
}

/** "127.0.0.1:9435", "[::1]:9435", ":9435" (all interfaces) → hostname and port. */
export function parseListen(s: string): { hostname: string; port: number } {
  const m = /^(?:\[([0-9a-fA-F:.]+)\]|([^:\[\]]*)):(\d{1,5})$/.exec(s.trim());
  if (!m) throw new ListenAddressError(s, "expected HOST:PORT");
  const port = Number(m[3]);
  if (port > 65535) throw new ListenAddressError(s, "port out of range");
  const hostname = m[1] ?? (m[2] === "" ? "0.0.0.0" : m[2]);
  return { hostname, port };
}

export interface MetricsServer {
  readonly hostname: string;
  readonly port: number;
  close(): Promise<void>;
}

export interface MetricsServerOptions {
  enabled?: boolean;
  listen?: string;
}

/** Starts the endpoint; returns null when disabled. Fails (typed by Deno) if the port is taken. */
export function startMetricsServer(
  metrics: AgentMetrics,
  opts: MetricsServerOptions = {},
): MetricsServer | null {
  if (opts.enabled === false) return null;
  const { hostname, port } = parseListen(opts.listen ?? DEFAULT_METRICS_LISTEN);
  const ac = new AbortController();
  const server = Deno.serve(
    { hostname, port, signal: ac.signal, onListen: () => {} },
    (req) => handle(metrics, req),
  );
  const addr = server.addr as Deno.NetAddr;
  return {
    hostname: addr.hostname,
    port: addr.port,
    close: async () => {
      ac.abort();
      await server.finished;
    },
  };
}

export function handle(metrics: AgentMetrics, req: Request): Response {
  const url = new URL(req.url);
  if (req.method !== "GET" && req.method !== "HEAD") {
    return new Response("method not allowed\n", { status: 405, headers: { allow: "GET, HEAD" } });
  }
  if (url.pathname === "/metrics") {
    return new Response(metrics.render(), {
      headers: { "content-type": "text/plain; version=0.0.4; charset=utf-8", "cache-control": "no-store" },
    });
  }
  if (url.pathname === "/healthz") {
    const h = metrics.health.check(metrics.clock());
    const status = h.healthy ? 200 : 503;
    if (url.searchParams.get("format") === "json") {
      return Response.json(h, { status, headers: { "cache-control": "no-store" } });
    }
    const body = h.healthy ? "ok\n" : `unhealthy: ${h.reasons.join("; ")}\n`;
    return new Response(body, { status, headers: { "content-type": "text/plain; charset=utf-8" } });
  }
  return new Response("not found (try /metrics or /healthz)\n", { status: 404 });
}
