/**
 * Self-signed certificates for the test servers, made with `openssl req` (no CA: clients use -k /
 * --ignore-certificate-errors).
 */
import { HarnessError, makeTempDir, requireTool, runOk } from "./proc.ts";

export interface TlsCert extends AsyncDisposable {
  certPath: string;
  keyPath: string;
  /** Directory holding both files; removed by close() when makeCert created it. */
  dir: string;
  close(): Promise<void>;
}

export interface CertOptions {
  /** Subject CN; default "localhost". */
  commonName?: string;
  /** subjectAltName entries, e.g. ["DNS:localhost", "IP:127.0.0.1"] (the default). */
  altNames?: string[];
  /** "ec" (P-256, fast, the default) or "rsa" (2048 bits). */
  keyType?: "ec" | "rsa";
  /** Write into this existing directory instead of a new temp dir (then close() leaves it). */
  dir?: string;
}

export async function makeCert(opts: CertOptions = {}): Promise<TlsCert> {
  const openssl = requireTool("openssl", "openssl");
  const cn = opts.commonName ?? "localhost";
  if (!/^[A-Za-z0-9.*-]+$/.test(cn)) throw new HarnessError(`bad commonName ${JSON.stringify(cn)}`);
  const own = opts.dir === undefined;
  const dir = opts.dir ?? await makeTempDir("ja4ebpf-cert-");
  const certPath = `${dir}/cert.pem`;
  const keyPath = `${dir}/key.pem`;
  const san = (opts.altNames ?? ["DNS:localhost", "IP:127.0.0.1"]).join(",");
  const key = opts.keyType === "rsa"
    ? ["-newkey", "rsa:2048"]
    : ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"];
  try {
    await runOk([
      openssl,
      "req",
      "-x509",
      ...key,
      "-nodes",
      "-days",
      "7",
      "-subj",
      `/CN=${cn}`,
      "-addext",
      `subjectAltName=${san}`,
      "-keyout",
      keyPath,
      "-out",
      certPath,
    ], { timeoutMs: 30_000 });
  } catch (e) {
    if (own) await Deno.remove(dir, { recursive: true }).catch(() => {});
    throw e;
  }
  const close = async () => {
    if (own) await Deno.remove(dir, { recursive: true }).catch(() => {});
  };
  return { certPath, keyPath, dir, close, [Symbol.asyncDispose]: close };
}
