import { assert, assertEquals, assertThrows } from "../testing/asserts.ts";
import {
  type ByteSource,
  bytesSource,
  CaptureFormatError,
  CaptureReader,
  openCapture,
  tsMicros,
} from "./pcap.ts";

class Bytes {
  private parts: number[] = [];
  constructor(private le: boolean) {}
  u8(v: number): this {
    this.parts.push(v & 0xff);
    return this;
  }
  u16(v: number): this {
    return this.le ? this.u8(v).u8(v >> 8) : this.u8(v >> 8).u8(v);
  }
  u32(v: number): this {
    return this.le ? this.u16(v & 0xffff).u16(v >>> 16) : this.u16(v >>> 16).u16(v & 0xffff);
  }
  raw(b: ArrayLike<number>): this {
    for (let i = 0; i < b.length; i++) this.parts.push(b[i]);
    return this;
  }
  get length(): number {
    return this.parts.length;
  }
  done(): Uint8Array {
    return new Uint8Array(this.parts);
  }
}

function pcap(
  le: boolean,
  nsec: boolean,
  linkType: number,
  recs: [number, number, Uint8Array][],
): Uint8Array {
  const b = new Bytes(le).u32(nsec ? 0xa1b23c4d : 0xa1b2c3d4).u16(2).u16(4).u32(0).u32(0).u32(65535).u32(
    linkType,
  );
  for (const [s, f, d] of recs) b.u32(s).u32(f).u32(d.length).u32(d.length + 4).raw(d);
  return b.done();
}

function ngBlock(le: boolean, type: number, body: Uint8Array): Uint8Array {
  const pad = (4 - (body.length % 4)) % 4;
  const len = 12 + body.length + pad;
  return new Bytes(le).u32(type).u32(len).raw(body).raw(new Uint8Array(pad)).u32(len).done();
}

function shb(le: boolean): Uint8Array {
  return ngBlock(
    le,
    0x0a0d0d0a,
    new Bytes(le).u32(0x1a2b3c4d).u16(1).u16(0).u32(0xffffffff).u32(0xffffffff).done(),
  );
}

function idb(le: boolean, linkType: number, tsresol?: number): Uint8Array {
  const b = new Bytes(le).u16(linkType).u16(0).u32(65535);
  if (tsresol !== undefined) b.u16(9).u16(1).u8(tsresol).u8(0).u8(0).u8(0).u16(0).u16(0);
  return ngBlock(le, 1, b.done());
}

function epb(le: boolean, ifId: number, units: bigint, data: Uint8Array): Uint8Array {
  const b = new Bytes(le).u32(ifId).u32(Number(units >> 32n)).u32(Number(units & 0xffffffffn)).u32(
    data.length,
  )
    .u32(data.length).raw(data);
  const pad = (4 - (data.length % 4)) % 4;
  return ngBlock(le, 6, b.raw(new Uint8Array(pad)).done());
}

function cat(...parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}

/** A source that hands out at most `n` bytes per read, to exercise records split over reads. */
function trickle(bytes: Uint8Array, n: number): ByteSource {
  const s = bytesSource(bytes);
  return { readSync: (p) => s.readSync(p.subarray(0, Math.min(n, p.length))) };
}

function readAll(r: CaptureReader) {
  const out = [];
  for (let p = r.next(); p; p = r.next()) out.push({ ...p, data: Array.from(p.data) });
  return out;
}

Deno.test("pcap: both byte orders, µs and ns", async (t) => {
  const d1 = new Uint8Array([1, 2, 3]);
  const d2 = new Uint8Array([9, 8, 7, 6, 5]);
  for (
    const [name, le, ns] of [["LE µs", true, false], ["BE µs", false, false], ["LE ns", true, true], [
      "BE ns",
      false,
      true,
    ]] as const
  ) {
    await t.step(name, () => {
      const bytes = pcap(le, ns, 1, [[1700000000, ns ? 123456789 : 123456, d1], [1700000001, 5, d2]]);
      const r = new CaptureReader(trickle(bytes, 7));
      assertEquals(r.format, "pcap");
      const pk = readAll(r);
      assertEquals(pk.length, 2);
      assertEquals(pk[0].data, [1, 2, 3]);
      assertEquals(pk[1].data, [9, 8, 7, 6, 5]);
      assertEquals([pk[0].frame, pk[1].frame], [1, 2]);
      assertEquals(pk[0].tsNsec, ns ? 123456789 : 123456000);
      assertEquals(tsMicros(pk[0]), 1700000000123456);
      assertEquals(pk[1].origLen, 9);
      assertEquals(r.warnings, []);
    });
  }
});

Deno.test("pcap: truncated last record stops cleanly with a warning", () => {
  const bytes = pcap(true, false, 1, [[1, 0, new Uint8Array(10)], [2, 0, new Uint8Array(40)]]);
  const r = new CaptureReader(bytesSource(bytes.subarray(0, bytes.length - 5)));
  assertEquals(readAll(r).length, 1);
  assertEquals(r.warnings.length, 1);
  assert(r.warnings[0].includes("truncated"), r.warnings[0]);
  assertEquals(r.next(), null);
});

Deno.test("pcap: not a capture → CaptureFormatError", async (t) => {
  for (
    const [name, bytes] of [
      ["text", new TextEncoder().encode("hello world, not a capture")],
      ["empty", new Uint8Array(0)],
      ["short header", new Uint8Array([0xd4, 0xc3, 0xb2, 0xa1, 2, 0])],
    ] as const
  ) {
    await t.step(name, () => {
      assertThrows(() => new CaptureReader(bytesSource(bytes)), CaptureFormatError);
    });
  }
});

Deno.test("pcapng: interfaces, if_tsresol, EPB/SPB, unknown blocks, both endians", async (t) => {
  for (const le of [true, false]) {
    await t.step(le ? "little-endian" : "big-endian", () => {
      const data = new Uint8Array([0xaa, 0xbb, 0xcc]);
      const spbBody = new Bytes(le).u32(3).raw(data).u8(0).done();
      const bytes = cat(
        shb(le),
        idb(le, 1), // default µs
        idb(le, 113, 9), // ns
        ngBlock(le, 0x0bad, new Uint8Array(8)), // unknown: skipped
        epb(le, 0, 1700000000_654321n, data),
        epb(le, 1, 1700000000_987654321n, data),
        ngBlock(le, 3, spbBody),
        ngBlock(le, 5, new Uint8Array(16)), // interface statistics: skipped
      );
      const r = new CaptureReader(trickle(bytes, 5));
      assertEquals(r.format, "pcapng");
      const pk = readAll(r);
      assertEquals(pk.map((p) => p.linkType), [1, 113, 1]);
      assertEquals(pk.map((p) => p.data), [[0xaa, 0xbb, 0xcc], [0xaa, 0xbb, 0xcc], [0xaa, 0xbb, 0xcc]]);
      assertEquals([pk[0].tsSec, pk[0].tsNsec], [1700000000, 654321000]);
      assertEquals([pk[1].tsSec, pk[1].tsNsec], [1700000000, 987654321]);
      assertEquals(r.warnings, []);
    });
  }
  await t.step("a second section with the other byte order resets interfaces", () => {
    const d = new Uint8Array([1]);
    const bytes = cat(
      shb(true),
      idb(true, 1),
      epb(true, 0, 1n, d),
      shb(false),
      idb(false, 101),
      epb(false, 0, 2n, d),
    );
    const pk = readAll(new CaptureReader(bytesSource(bytes)));
    assertEquals(pk.map((p) => p.linkType), [1, 101]);
  });
  await t.step("binary if_tsresol (2^-10)", () => {
    const bytes = cat(
      shb(true),
      idb(true, 1, 0x80 | 10),
      epb(true, 0, 1024n * 5n + 512n, new Uint8Array([1])),
    );
    const [p] = readAll(new CaptureReader(bytesSource(bytes)));
    assertEquals([p.tsSec, p.tsNsec], [5, 500000000]);
  });
  await t.step("packet of an undescribed interface ends the read with a warning", () => {
    const bytes = cat(shb(true), epb(true, 0, 1n, new Uint8Array([1])));
    const r = new CaptureReader(bytesSource(bytes));
    assertEquals(readAll(r).length, 0);
    assert(r.warnings[0].includes("interface 0"));
  });
  await t.step("truncated last block", () => {
    const bytes = cat(
      shb(true),
      idb(true, 1),
      epb(true, 0, 1n, new Uint8Array(20)),
      epb(true, 0, 2n, new Uint8Array(20)),
    );
    const r = new CaptureReader(bytesSource(bytes.subarray(0, bytes.length - 3)));
    assertEquals(readAll(r).length, 1);
    assert(r.warnings[0].includes("truncated"), r.warnings[0]);
  });
});

Deno.test("pcapng: Decryption Secrets Blocks are surfaced in file order, both endians", async (t) => {
  const keys = new TextEncoder().encode(`CLIENT_RANDOM ${"ab".repeat(32)} ${"cd".repeat(48)}\n`);
  const dsb = (le: boolean, type: number, data: Uint8Array, lenField = data.length) =>
    ngBlock(le, 10, cat(new Bytes(le).u32(type).u32(lenField).done(), data));
  for (const le of [true, false]) {
    await t.step(le ? "little-endian" : "big-endian", () => {
      const d = new Uint8Array([1]);
      const bytes = cat(
        shb(le),
        idb(le, 1),
        epb(le, 0, 1n, d),
        dsb(le, 0x544c534b, keys), // "TLSK", 105 bytes: padded
        epb(le, 0, 2n, d),
        dsb(le, 0x57474b4c, new Uint8Array(4)), // "WGKL": surfaced too, the caller decides
        dsb(le, 0x544c534b, keys, 4096), // length past the block: skipped with a warning
        epb(le, 0, 3n, d),
      );
      const r = new CaptureReader(trickle(bytes, 7));
      const seen: [string, number, number, number][] = [];
      r.onDecryptionSecrets = (s) => seen.push(["secrets", s.secretsType, s.data.length, s.afterFrame]);
      const order: string[] = [];
      for (let p = r.next(); p; p = r.next()) order.push(`frame ${p.frame} after ${seen.length} secrets`);
      assertEquals(seen, [["secrets", 0x544c534b, keys.length, 1], ["secrets", 0x57474b4c, 4, 2]]);
      assertEquals(order, ["frame 1 after 0 secrets", "frame 2 after 1 secrets", "frame 3 after 2 secrets"]);
      assertEquals(r.decryptionSecretsBlocks, 2);
      assertEquals(r.warnings.length, 1);
      assert(r.warnings[0].includes("decryption secrets"), r.warnings[0]);
    });
  }
  await t.step("the FoxIO capture with an embedded key log", () => {
    const { reader, file } = openCapture(
      new URL("../../tests/fixtures/foxio/pcap/http2-with-cookies.pcapng", import.meta.url),
    );
    try {
      const texts: string[] = [];
      reader.onDecryptionSecrets = (s) => texts.push(new TextDecoder().decode(s.data));
      while (reader.next());
      assertEquals(texts.length, 1);
      const lines = texts[0].split("\n").filter((l) => l !== "");
      // One line per secret of every TLS 1.3 session Chrome opened while recording.
      assertEquals(lines.filter((l) => l.startsWith("CLIENT_TRAFFIC_SECRET_0 ")).length, 35);
      assert(lines.every((l) => /^[A-Z_0-9]+ [0-9a-f]{64} [0-9a-f]+$/.test(l)), "key-log lines");
    } finally {
      file.close();
    }
  });
});

Deno.test("pcap: a record larger than the read window", () => {
  const big = new Uint8Array(3 << 20).map((_, i) => i & 0xff);
  const r = new CaptureReader(
    trickle(pcap(true, false, 1, [[0, 0, big], [1, 0, new Uint8Array([7])]]), 1 << 16),
  );
  const a = r.next()!;
  assertEquals(a.data.length, big.length);
  assertEquals(a.data[12345], 12345 & 0xff);
  assertEquals(Array.from(r.next()!.data), [7]);
});

Deno.test("pcap: FoxIO fixtures (frame counts and first timestamp as tshark reads them)", async (t) => {
  const dir = new URL("../../tests/fixtures/foxio/pcap/", import.meta.url);
  for (
    const [name, format, frames, firstUs] of [
      ["tls3.pcapng", "pcapng", 1189, 1692898400148036],
      ["http1.pcapng", "pcap", 184, undefined],
      ["ipv6.pcapng", "pcap", 9, undefined],
      ["ssh-r.pcap", "pcap", 1852, undefined],
    ] as const
  ) {
    await t.step(name, () => {
      const { reader, file } = openCapture(new URL(name, dir));
      try {
        assertEquals(reader.format, format);
        let n = 0;
        let first: number | undefined;
        for (let p = reader.next(); p; p = reader.next()) {
          n++;
          first ??= tsMicros(p);
        }
        assertEquals(n, frames);
        if (firstUs !== undefined) assertEquals(first, firstUs);
        assertEquals(reader.warnings, []);
      } finally {
        file.close();
      }
    });
  }
});
