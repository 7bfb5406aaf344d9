import { assertEquals, assertThrows } from "../testing/asserts.ts";
import { CpuCounters, ListenPorts, TracedPids } from "./maps.ts";
import { makePlan, openPlanned } from "./plan.ts";
import { embeddedObject } from "./embedded.ts";
import { possibleCpus } from "./object.ts";
import { DropReason, ServerKind, TracedBits } from "./layout.gen.ts";
import { requireRoot } from "../../tests/fixtures/bpf/fixture.ts";

Deno.test("typed map helpers write the bytes the BPF programs read (real object, maps only)", async (t) => {
  requireRoot();
  const bytes = embeddedObject();
  // No hooks: the object is loaded with its maps and no program attached.
  using p = openPlanned(bytes, makePlan(bytes, { hooks: [] }));
  const raw = (name: string) => p.obj.map(name);

  await t.step("traced_pids: tgid → ServerKind as little-endian u32s; entries read back", () => {
    const pids = new TracedPids(raw("traced_pids"));
    pids.set(0x01020304, ServerKind.APACHE);
    pids.set(77, ServerKind.NGINX);
    assertEquals(raw("traced_pids").lookup(new Uint8Array([4, 3, 2, 1])), new Uint8Array([2, 0, 0, 0]));
    assertEquals(pids.entries(), new Map([[0x01020304, ServerKind.APACHE], [77, ServerKind.NGINX]]));
    // The kernel's probe counters above the kind (an SSL_read and an apr_socket_recv entry ran) stay out.
    const marked = (1 << TracedBits.SSL_SHIFT) + (3 << TracedBits.APR_SHIFT) + ServerKind.NGINX;
    raw("traced_pids").update(
      new Uint8Array([77, 0, 0, 0]),
      new Uint8Array(new Uint32Array([marked]).buffer),
    );
    assertEquals(pids.entries().get(77), ServerKind.NGINX);
    assertEquals([pids.delete(77), pids.delete(77)], [true, false]);
    assertEquals([...pids.entries().keys()], [0x01020304]);
  });

  await t.step("listen_ports: the element of a port (u32 index, host order) is 1, cleared to 0", () => {
    const ports = new ListenPorts(raw("listen_ports"));
    assertEquals(ports.has(8443), false);
    ports.add(8443); // 0x20fb
    assertEquals(raw("listen_ports").lookup(new Uint8Array([0xfb, 0x20, 0, 0])), new Uint8Array([1]));
    assertEquals(ports.has(8443), true);
    assertEquals(ports.has(8444), false);
    assertEquals([ports.delete(8443), ports.delete(8443)], [true, false]);
    assertEquals(raw("listen_ports").lookup(new Uint8Array([0xfb, 0x20, 0, 0])), new Uint8Array([0]));
  });

  await t.step("drops: the per-CPU counters of a reason are summed", () => {
    const drops = new CpuCounters(raw("drops"));
    assertEquals(drops.total(DropReason.SCRATCH), 0n);
    const v = new BigUint64Array(possibleCpus()).fill(3n);
    raw("drops").update(
      new Uint8Array(new Uint32Array([DropReason.SCRATCH]).buffer),
      new Uint8Array(v.buffer),
    );
    assertEquals(drops.total(DropReason.SCRATCH), 3n * BigInt(possibleCpus()));
    assertEquals(drops.total(DropReason.RINGBUF), 0n);
  });

  await t.step("a map of another shape is refused by name, not written with wrong bytes", () => {
    assertThrows(() => new TracedPids(raw("listen_ports")), Error, "map listen_ports: key/value 4/1 bytes");
    assertThrows(() => new ListenPorts(raw("drops")), Error, "expected 4/1");
    assertEquals(TracedPids.of(undefined), undefined);
  });
});
