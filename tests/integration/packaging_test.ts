/**
 * Packaging end to end: builds dist/ja4ebpf and its RPM (scripts/build.sh --rpm), and the other
 * architecture's, dist/ja4ebpf-aarch64 and its RPM (scripts/build.sh --arch aarch64 --rpm), then checks both
 * executables (launcher, runtime architecture, the BPF object built for that architecture), this machine's
 * offline with an empty HOME/DENO_DIR, the launcher's check of the unpacked runtime, the systemd unit with
 * systemd-analyze, both RPMs' architecture, files, modes, scriptlets and payload, and the capabilities of the
 * executable run as an unprivileged user under the unit's capability set. Needs root (unshare, setpriv),
 * rpmbuild, systemd-analyze, setpriv, and npm (Deno's linux-arm64 runtime) on first run.
 */
import {
  assert,
  assertEquals,
  assertGreater,
  assertMatch,
  assertStringIncludes,
} from "../../src/testing/asserts.ts";
import { VERSION } from "../../src/version.ts";
import { AGENT_DENO_FLAGS, AGENT_ENV } from "../helpers/agent.ts";

const ROOT = new URL("../../", import.meta.url).pathname;
const BIN = `${ROOT}dist/ja4ebpf`;
// This machine's architecture and the other one: names as uname/RPM spell them, ELF e_machine, BPF arch.
const HOST = Deno.build.arch === "x86_64"
  ? { rpm: "x86_64", elf: 62, bpf: "x86" }
  : { rpm: "aarch64", elf: 183, bpf: "arm64" };
const OTHER = HOST.rpm === "x86_64"
  ? { rpm: "aarch64", elf: 183, bpf: "arm64" }
  : { rpm: "x86_64", elf: 62, bpf: "x86" };
const BIN_OTHER = `${ROOT}dist/ja4ebpf-${OTHER.rpm}`;
const BUILDS = [
  { ...HOST, bin: BIN, object: `${ROOT}dist/bpf/ja4ebpf.bpf.o` },
  { ...OTHER, bin: BIN_OTHER, object: `${ROOT}dist/bpf/${OTHER.bpf}/ja4ebpf.bpf.o` },
];
const UNIT = `${ROOT}rpm/ja4ebpf.service`;
const DROPIN = `${ROOT}rpm/el8-capabilities.conf`;
const NOBODY = 65534;

interface Out {
  code: number;
  stdout: string;
  stderr: string;
}

async function sh(cmd: string, args: string[], opts: Deno.CommandOptions = {}): Promise<Out> {
  const o = await new Deno.Command(cmd, { stdout: "piped", stderr: "piped", ...opts, args }).output();
  const d = new TextDecoder();
  return { code: o.code, stdout: d.decode(o.stdout), stderr: d.decode(o.stderr) };
}

async function need(tool: string): Promise<void> {
  const r = await sh("sh", ["-c", `command -v ${tool}`]);
  if (r.code !== 0) throw new Error(`packaging test needs '${tool}' (run scripts/setup.sh --test)`);
}

/** Capability names of a unit line such as `AmbientCapabilities=CAP_BPF CAP_PERFMON`. */
function unitCaps(unit: string, key: string): string[] {
  const lines = unit.split("\n").filter((l) => l.startsWith(`${key}=`));
  assertEquals(lines.length, 1, `exactly one ${key}= line`);
  return lines[0].slice(key.length + 1).trim().split(/\s+/);
}

const CAP_NUMBERS: Record<string, number> = {
  CAP_DAC_READ_SEARCH: 2,
  CAP_NET_ADMIN: 12,
  CAP_SYS_PTRACE: 19,
  CAP_SYS_ADMIN: 21,
  CAP_PERFMON: 38,
  CAP_BPF: 39,
};

Deno.test("packaging: single executable, systemd unit, RPM, capabilities", async (t) => {
  if (Deno.uid() !== 0) throw new Error("packaging test needs root (unshare -n, setpriv, chown)");
  for (
    const tool of [
      "rpmbuild",
      "rpm",
      "rpm2archive",
      "systemd-analyze",
      "setpriv",
      "unshare",
      "tar",
      "gzip",
    ]
  ) {
    await need(tool);
  }
  const tmp = await Deno.makeTempDir({ prefix: "ja4ebpf-pkg-" });
  await Deno.chmod(tmp, 0o755);
  try {
    let kind = "";
    await t.step("build: scripts/build.sh --rpm names the build kind", async () => {
      const t0 = performance.now();
      const r = await sh("bash", [`${ROOT}scripts/build.sh`, "--rpm"], { cwd: ROOT });
      assertEquals(r.code, 0, `build failed:\n${r.stderr}`);
      const m = /build: kind: (self-extracting|compiled) /.exec(r.stderr);
      assert(m, `build log names the kind:\n${r.stderr}`);
      kind = m[1];
      assertMatch(r.stderr, new RegExp(`built dist/ja4ebpf: ${kind} build, ${HOST.rpm}, \\d+ MiB`));
      console.log(`build: ${kind}, ${((performance.now() - t0) / 1000).toFixed(1)} s`);
    });

    await t.step(`build: scripts/build.sh --arch ${OTHER.rpm} --rpm`, async () => {
      const t0 = performance.now();
      const r = await sh("bash", [`${ROOT}scripts/build.sh`, "--arch", OTHER.rpm, "--rpm"], {
        cwd: ROOT,
        env: { BUILD_KIND_FORCE: "self-extracting" },
      });
      assertEquals(r.code, 0, `build failed:\n${r.stderr}`);
      assertMatch(
        r.stderr,
        new RegExp(`built dist/ja4ebpf-${OTHER.rpm}: self-extracting build, ${OTHER.rpm}, `),
      );
      console.log(`build ${OTHER.rpm}: ${((performance.now() - t0) / 1000).toFixed(1)} s`);
    });

    await t.step("both executables: the runtime and the BPF object of their architecture", async () => {
      const b64 = async (f: string) =>
        btoa(Array.from(await Deno.readFile(f), (c) => String.fromCharCode(c)).join(""));
      const objects = await Promise.all(BUILDS.map((b) => b64(b.object)));
      assert(objects[0] !== objects[1], "the two BPF objects differ");
      for (const [i, b] of BUILDS.entries()) {
        if (b.bin === BIN && kind !== "self-extracting") continue; // a compiled ELF: checked below
        const head = new TextDecoder().decode((await Deno.readFile(b.bin)).subarray(0, 4096));
        assert(head.startsWith("#!/bin/sh\n"), `${b.rpm}: sh launcher`);
        const off = Number(/^OFFSET=(\d+)/m.exec(head)?.[1]);
        const dir = `${tmp}/payload-${b.rpm}`;
        await Deno.mkdir(dir);
        const x = await sh("sh", ["-c", `tail -c +${off + 1} '${b.bin}' | gzip -dc | tar -xf - -C '${dir}'`]);
        assertEquals(x.code, 0, x.stderr);
        const deno = await Deno.readFile(`${dir}/deno`);
        assertEquals([...deno.subarray(0, 4)], [0x7f, 0x45, 0x4c, 0x46], `${b.rpm}: deno is ELF`);
        const machine = new DataView(deno.buffer, deno.byteOffset).getUint16(18, true);
        assertEquals(machine, b.elf, `${b.rpm}: deno's ELF machine`);
        const js = await Deno.readTextFile(`${dir}/ja4ebpf.js`);
        assert(js.includes(objects[i]), `${b.rpm}: the bundle embeds the ${b.bpf} BPF object`);
        assert(!js.includes(objects[1 - i]), `${b.rpm}: and not the other architecture's`);
        // The launcher's sums are the payload's.
        for (
          const [tool, key, hex] of [["b2sum", "SUMS_B2", 128], ["sha256sum", "SUMS_SHA256", 64]] as const
        ) {
          const sums = new RegExp(`^${key}="([0-9a-f]{${hex}}) ([0-9a-f]{${hex}})"$`, "m").exec(head);
          assert(sums, `${b.rpm}: launcher carries ${key}`);
          const got = await sh(tool, [`${dir}/deno`, `${dir}/ja4ebpf.js`]);
          assertEquals(
            got.stdout.split("\n").slice(0, 2).map((l) => l.slice(0, hex)),
            [sums[1], sums[2]],
            key,
          );
        }
        await Deno.remove(dir, { recursive: true });
        console.log(
          `${b.rpm}: ${
            ((await Deno.stat(b.bin)).size / 1048576).toFixed(1)
          } MiB, deno ELF machine ${machine}`,
        );
      }
    });

    await t.step("the executable is real: launcher + gzip payload, or an ELF", async () => {
      const st = await Deno.stat(BIN);
      assertEquals(st.mode! & 0o777, 0o755);
      assertGreater(st.size, 20 * 1024 * 1024, "carries a whole runtime");
      const head = new Uint8Array(4096);
      const f = await Deno.open(BIN);
      await f.read(head);
      f.close();
      const text = new TextDecoder().decode(head);
      if (kind === "self-extracting") {
        assert(text.startsWith("#!/bin/sh\n"), "sh launcher");
        const off = Number(/^OFFSET=(\d+)/m.exec(text)?.[1]);
        const all = await Deno.readFile(BIN);
        assertEquals([all[off], all[off + 1]], [0x1f, 0x8b], "a gzip stream starts at OFFSET");
        // The payload is a tar of the deno binary and the bundle.
        const list = await sh("sh", ["-c", `tail -c +${off + 1} '${BIN}' | gzip -dc | tar -tvf -`]);
        assertEquals(list.code, 0, list.stderr);
        assertMatch(list.stdout, /\bdeno\n/);
        assertMatch(list.stdout, /\bja4ebpf\.js\n/);
        // The environment the agent is packaged with (scripts/agent-env), exported unless already set.
        for (const [k, v] of Object.entries(AGENT_ENV)) {
          assert(text.split("\n").includes(`export ${k}="\${${k}:-${v}}"`), `launcher exports ${k}=${v}`);
        }
        // ... and its `deno run` flags (scripts/agent-deno-flags), with the V8 flags in PERMS.
        const perms = /^PERMS="(.*)"$/m.exec(text)?.[1].split(" ") ?? [];
        assertGreater(AGENT_DENO_FLAGS.length, 0, "scripts/agent-deno-flags names a flag");
        for (const f of AGENT_DENO_FLAGS) assert(perms.includes(f), `launcher runs deno with ${f}: ${perms}`);
        assert(perms.some((f) => f.startsWith("--v8-flags=")), `launcher passes the V8 flags: ${perms}`);
        console.log(`executable: ${(st.size / 1048576).toFixed(1)} MiB`);
      } else {
        assertEquals([...head.slice(0, 4)], [0x7f, 0x45, 0x4c, 0x46], "ELF");
      }
    });

    await t.step("offline, empty HOME and DENO_DIR: version names the kind; --help works", async () => {
      const home = `${tmp}/home`;
      const dd = `${tmp}/deno-dir`;
      await Deno.mkdir(home);
      await Deno.mkdir(dd);
      const env = ["env", "-i", `HOME=${home}`, `DENO_DIR=${dd}`, "PATH=/usr/bin:/bin"];
      const times: number[] = [];
      for (let i = 0; i < 2; i++) {
        const t0 = performance.now();
        const v = await sh("unshare", ["-n", ...env, BIN, "version"]);
        times.push(performance.now() - t0);
        assertEquals(v.code, 0, v.stderr);
        assertEquals(v.stdout.trim(), `ja4ebpf ${VERSION} (${kind} build, deno ${Deno.version.deno})`);
      }
      const j = await sh("unshare", ["-n", ...env, BIN, "version", "--json"]);
      assertEquals(JSON.parse(j.stdout).build, kind);
      const h = await sh("unshare", ["-n", ...env, BIN, "--help"]);
      assertEquals(h.code, 0, h.stderr);
      assertStringIncludes(h.stdout, "Usage:");
      assertStringIncludes(h.stdout, "ja4ebpf version");
      assertEquals([...Deno.readDirSync(dd)].length, 0, "DENO_DIR untouched");
      if (kind === "self-extracting") {
        const cache = [...Deno.readDirSync(`${home}/.cache/ja4ebpf`)].filter((e) => !e.name.startsWith("."));
        assertEquals(cache.length, 1, "one hash-keyed runtime directory");
        assertEquals(
          (await Deno.stat(`${home}/.cache/ja4ebpf/${cache[0].name}`)).mode! & 0o077,
          0,
          "private",
        );
        assert(times[1] < times[0], `second start reuses the cache (${times.map(Math.round)} ms)`);
        console.log(`start: first ${Math.round(times[0])} ms (unpack), then ${Math.round(times[1])} ms`);
      }
    });

    await t.step("a changed runtime in the cache is unpacked again, never run", async () => {
      if (kind !== "self-extracting") return;
      const home = `${tmp}/home-tamper`;
      await Deno.mkdir(home);
      const env = ["env", "-i", `HOME=${home}`, "PATH=/usr/bin:/bin"];
      const want = `ja4ebpf ${VERSION} (${kind} build, deno ${Deno.version.deno})`;
      const first = await sh("unshare", ["-n", ...env, BIN, "version"]);
      assertEquals(first.stdout.trim(), want, first.stderr);
      const [dir] = [...Deno.readDirSync(`${home}/.cache/ja4ebpf`)].filter((e) => !e.name.startsWith("."));
      const unpacked = `${home}/.cache/ja4ebpf/${dir.name}`;
      const original = await Deno.readFile(`${unpacked}/deno`);
      // What a user who can write the cache (the service user) could plant: another program as "deno", then
      // a changed agent.
      for (
        const [file, planted] of [
          ["deno", "#!/bin/sh\necho PLANTED\n"],
          ["ja4ebpf.js", 'console.log("PLANTED");\n'],
        ]
      ) {
        await Deno.writeTextFile(`${unpacked}/${file}`, planted);
        await Deno.chmod(`${unpacked}/deno`, 0o755);
        const r = await sh("unshare", ["-n", ...env, BIN, "version"]);
        assertEquals(r.code, 0, r.stderr);
        assertEquals(r.stdout.trim(), want, `the planted ${file} did not run`);
        assertStringIncludes(r.stderr, "differs from this executable's: unpacking it again");
        const again = await Deno.readFile(`${unpacked}/deno`);
        assert(
          again.length === original.length && again.every((b, i) => b === original[i]),
          "runtime restored",
        );
      }
      // A runtime that cannot be replaced is refused, not run: its directory made unwritable for its user.
      await Deno.writeTextFile(`${unpacked}/ja4ebpf.js`, 'console.log("PLANTED");\n');
      await sh("chown", ["-R", `${NOBODY}:${NOBODY}`, home]);
      await Deno.chmod(unpacked, 0o500);
      const r = await sh("setpriv", [
        `--reuid=${NOBODY}`,
        `--regid=${NOBODY}`,
        "--clear-groups",
        ...env,
        BIN,
        "version",
      ]);
      assert(r.code !== 0, `refused: exit ${r.code}`);
      assert(!r.stdout.includes("PLANTED"), "the planted agent did not run");
      assertStringIncludes(r.stderr, "refusing to run it");
    });

    await t.step("systemd unit: hardening as specified, systemd-analyze verify is silent", async () => {
      const unit = await Deno.readTextFile(UNIT);
      // Why each: docs/operations.md; that each is needed: tests/integration/service_test.ts.
      const caps = ["CAP_SYS_ADMIN", "CAP_NET_ADMIN", "CAP_SYS_PTRACE", "CAP_DAC_READ_SEARCH"];
      assertEquals(unitCaps(unit, "AmbientCapabilities"), caps);
      assertEquals(unitCaps(unit, "CapabilityBoundingSet"), caps);
      for (
        const line of [
          "User=ja4ebpf",
          "NoNewPrivileges=yes",
          "ProtectProc=default",
          "StateDirectory=ja4ebpf",
          "LoadCredential=clickhouse-password:/etc/ja4ebpf/clickhouse.password",
          "ProtectSystem=strict",
          "LimitMEMLOCK=infinity",
          "Restart=on-failure",
          // The overload policy (docs/operations.md "systemd"): below the servers it watches.
          "CPUWeight=20",
          "Nice=10",
          "CPUSchedulingPolicy=batch",
          // The packaged environment (scripts/agent-env), e.g. one malloc arena.
          ...Object.entries(AGENT_ENV).map(([k, v]) => `Environment=${k}=${v}`),
        ]
      ) assert(unit.split("\n").includes(line), `unit has ${line}`);
      for (
        const bad of ["MemoryDenyWriteExecute", "ProtectProc=invisible", "ProcSubset=pid", "PrivateNetwork"]
      ) {
        assert(!unit.split("\n").some((l) => l.startsWith(bad)), `unit must not set ${bad}`);
      }
      // A copy whose ExecStart points at the built executable, with the EL8 drop-in beside it.
      const dir = `${tmp}/unit`;
      await Deno.mkdir(`${dir}/ja4ebpf.service.d`, { recursive: true });
      await Deno.copyFile(BIN, `${dir}/ja4ebpf`);
      await Deno.writeTextFile(
        `${dir}/ja4ebpf.service`,
        unit.replace(/^ExecStart=\/usr\/bin\/ja4ebpf /m, `ExecStart=${dir}/ja4ebpf `),
      );
      for (const [name, withDropin] of [["base", false], ["el8 drop-in", true]] as const) {
        if (withDropin) await Deno.copyFile(DROPIN, `${dir}/ja4ebpf.service.d/10-el8-capabilities.conf`);
        const v = await sh("systemd-analyze", ["verify", "--man=no", `${dir}/ja4ebpf.service`]);
        assertEquals([v.code, v.stdout + v.stderr], [0, ""], `${name}: systemd-analyze verify`);
      }
      // The drop-in really replaces the capability set (an empty assignment resets the list).
      const dropin = await Deno.readTextFile(DROPIN);
      assertEquals(dropin.match(/^AmbientCapabilities=.*$/gm), [
        "AmbientCapabilities=",
        "AmbientCapabilities=CAP_SYS_ADMIN CAP_NET_ADMIN CAP_SYS_PTRACE CAP_DAC_READ_SEARCH",
      ]);
      assertStringIncludes(dropin, "\nLimitMEMLOCK=infinity\n");
      const sec = await sh("systemd-analyze", ["security", "--offline=yes", `${dir}/ja4ebpf.service`]);
      const exposure = /Overall exposure level for ja4ebpf\.service: ([\d.]+)/.exec(sec.stdout);
      assert(exposure, `systemd-analyze security printed an exposure level:\n${sec.stdout}${sec.stderr}`);
      console.log(`systemd-analyze security exposure: ${exposure[1]}`);
      assert(Number(exposure[1]) <= 4, "exposure stays in systemd's OK range");
    });

    await t.step("RPMs: one per architecture, its ARCH in the header", async () => {
      const rpms = [...Deno.readDirSync(`${ROOT}dist/rpm`)].map((e) => e.name).filter((n) =>
        n.endsWith(".rpm")
      );
      assertEquals(rpms.sort(), BUILDS.map((b) => `ja4ebpf-${VERSION}-1.${b.rpm}.rpm`).sort());
      for (const b of BUILDS) {
        const q = await sh("rpm", [
          "-qp",
          "--qf",
          "%{ARCH} %{NAME} %{VERSION}",
          `${ROOT}dist/rpm/ja4ebpf-${VERSION}-1.${b.rpm}.rpm`,
        ]);
        assertEquals(q.stdout, `${b.rpm} ja4ebpf ${VERSION}`, q.stderr);
      }
    });

    for (const b of BUILDS) {
      await t.step(
        `RPM ${b.rpm}: files, modes, licences, scriptlets, payload identical to ${b.bin.slice(ROOT.length)}`,
        async () => {
          const rpm = `${ROOT}dist/rpm/ja4ebpf-${VERSION}-1.${b.rpm}.rpm`;
          const ql = await sh("rpm", ["-qlp", rpm]);
          assertEquals(ql.code, 0, ql.stderr);
          const files = ql.stdout.trim().split("\n").sort();
          assertEquals(files, [
            "/etc/ja4ebpf",
            "/etc/ja4ebpf/clickhouse.password",
            "/etc/ja4ebpf/config.yaml",
            "/usr/bin/ja4ebpf",
            "/usr/lib/systemd/system/ja4ebpf.service",
            "/usr/share/doc/ja4ebpf",
            "/usr/share/doc/ja4ebpf/operations.md",
            "/usr/share/ja4ebpf",
            "/usr/share/ja4ebpf/el8-capabilities.conf",
            "/usr/share/licenses/ja4ebpf",
            "/usr/share/licenses/ja4ebpf/Deno-MIT.txt",
            "/usr/share/licenses/ja4ebpf/FoxIO-License-1.1.txt",
            "/usr/share/licenses/ja4ebpf/JA4-BSD-3-Clause.txt",
            "/usr/share/licenses/ja4ebpf/NOTICE",
            "/var/cache/ja4ebpf",
            "/var/lib/ja4ebpf",
            "/var/log/ja4ebpf",
          ]);
          const q = await sh("rpm", [
            "-qp",
            "--qf",
            "[%{FILEMODES:perms} %{FILEUSERNAME} %{FILEGROUPNAME} %{FILEFLAGS:fflags} %{FILENAMES}\n]",
            rpm,
          ]);
          const attrs = new Map(
            q.stdout.trim().split("\n").map((l) => {
              const [perms, user, group, flags, name] = l.split(" ");
              return [name, `${perms} ${user}:${group} ${flags}`];
            }),
          );
          const expect: [string, string][] = [
            ["/usr/bin/ja4ebpf", "-rwxr-xr-x root:root "],
            ["/usr/lib/systemd/system/ja4ebpf.service", "-rw-r--r-- root:root "],
            ["/etc/ja4ebpf", "drwxr-x--- root:ja4ebpf "],
            ["/etc/ja4ebpf/config.yaml", "-rw-r----- root:ja4ebpf cn"],
            ["/etc/ja4ebpf/clickhouse.password", "-rw------- root:root cn"],
            ["/var/lib/ja4ebpf", "drwx------ ja4ebpf:ja4ebpf "],
            ["/var/cache/ja4ebpf", "drwx------ ja4ebpf:ja4ebpf "],
            ["/usr/share/licenses/ja4ebpf/FoxIO-License-1.1.txt", "-rw-r--r-- root:root l"],
            ["/usr/share/licenses/ja4ebpf/NOTICE", "-rw-r--r-- root:root l"],
            ["/usr/share/doc/ja4ebpf/operations.md", "-rw-r--r-- root:root d"],
          ];
          for (const [f, a] of expect) assertEquals(attrs.get(f), a, f);
          const scripts = await sh("rpm", ["-qp", "--scripts", rpm]);
          const s = scripts.stdout;
          for (
            const [what, re] of [
              ["preinstall creates the group", /preinstall scriptlet[\s\S]*groupadd -r ja4ebpf/],
              [
                "preinstall creates the system user",
                /useradd -r -g ja4ebpf -d \/var\/lib\/ja4ebpf -s \/sbin\/nologin/,
              ],
              ["postinstall installs the EL8 drop-in when CAP_BPF is missing", /cap_last_cap[\s\S]*-lt 39/],
              ["postinstall presets the unit on first install", /systemctl preset ja4ebpf\.service/],
              ["preuninstall stops and disables on erase", /disable --now ja4ebpf\.service/],
              ["postuninstall restarts on upgrade", /try-restart ja4ebpf\.service/],
            ] as const
          ) assertMatch(s, re, what);
          // The packaged files are the built ones.
          const x = `${tmp}/rpmroot-${b.rpm}`;
          await Deno.mkdir(x);
          const ex = await sh("sh", ["-c", `rpm2archive - <'${rpm}' | tar -xzf -`], { cwd: x });
          assertEquals(ex.code, 0, ex.stderr);
          const [a, c] = await Promise.all([
            sh("sha256sum", [`${x}/usr/bin/ja4ebpf`]),
            sh("sha256sum", [b.bin]),
          ]);
          assertEquals(a.stdout.split(" ")[0], c.stdout.split(" ")[0], `packaged executable = ${b.bin}`);
          assertEquals(
            await Deno.readTextFile(`${x}/etc/ja4ebpf/config.yaml`),
            await Deno.readTextFile(`${ROOT}rpm/config.yaml`),
          );
          assertStringIncludes(
            await Deno.readTextFile(`${x}/usr/share/licenses/ja4ebpf/NOTICE`),
            "FoxIO License 1.1",
          );
          console.log(`rpm ${b.rpm}: ${((await Deno.stat(rpm)).size / 1048576).toFixed(1)} MiB`);
        },
      );
    }

    await t.step("capabilities: run as nobody with the unit's set, CapEff is exactly that set", async () => {
      const unit = await Deno.readTextFile(UNIT);
      const caps = unitCaps(unit, "AmbientCapabilities");
      const names = caps.map((c) => "+" + c.slice(4).toLowerCase()).join(",");
      const mask = caps.reduce((m, c) => m | (1n << BigInt(CAP_NUMBERS[c])), 0n);
      const dir = `${tmp}/caps`;
      await Deno.mkdir(`${dir}/home`, { recursive: true });
      await Deno.chmod(dir, 0o755);
      await Deno.copyFile(BIN, `${dir}/ja4ebpf`);
      await Deno.chmod(`${dir}/ja4ebpf`, 0o755);
      await Deno.chown(`${dir}/home`, NOBODY, NOBODY);
      await Deno.writeTextFile(
        `${dir}/config.yaml`,
        // Rows to stdout (discarded by the spawn): a config without any output is refused at start.
        "output:\n  stdout: true\nmetrics:\n  listen: 127.0.0.1:19435\n",
      );
      const setpriv = [
        `--reuid=${NOBODY}`,
        `--regid=${NOBODY}`,
        "--clear-groups",
        `--inh-caps=-all,${names}`,
        `--ambient-caps=-all,${names}`,
        `--bounding-set=-all,${names}`,
        "env",
        "-i",
        `HOME=${dir}/home`,
        "PATH=/usr/bin:/bin",
        `${dir}/ja4ebpf`,
      ];
      // First start as nobody unpacks the runtime into nobody's cache.
      const v = await sh("setpriv", [...setpriv, "version"]);
      assertEquals(v.code, 0, v.stderr);
      assertStringIncludes(v.stdout, `(${kind} build`);
      // Then the agent itself: read its status while the Deno process (after the launcher's exec) runs.
      const child = new Deno.Command("setpriv", {
        args: [...setpriv, "run", "--config", `${dir}/config.yaml`],
        stdout: "null",
        stderr: "piped",
      }).spawn();
      let status = "";
      const deadline = performance.now() + 15_000;
      while (performance.now() < deadline) {
        try {
          const s = Deno.readTextFileSync(`/proc/${child.pid}/status`);
          if (/^Name:\s+deno$/m.test(s)) {
            status = s;
            break;
          }
          if (/^State:\s+Z/m.test(s)) break;
        } catch {
          break; // gone
        }
      }
      try {
        child.kill("SIGTERM");
      } catch { /* already exited */ }
      const res = await child.output();
      assert(
        status,
        `saw the agent's Deno process (exit ${res.code}): ${new TextDecoder().decode(res.stderr)}`,
      );
      const field = (k: string) =>
        /^(\w+):\s+(.*)$/m.exec(status.split("\n").find((l) => l.startsWith(k + ":"))!)![2];
      assertEquals(field("Uid").split(/\s+/), Array(4).fill(String(NOBODY)), "runs as nobody");
      for (const k of ["CapEff", "CapPrm", "CapAmb"]) {
        assertEquals(BigInt("0x" + field(k)), mask, `${k} = the unit's set (${caps.join(" ")})`);
      }
      assertEquals(BigInt("0x" + field("CapBnd")), mask, "bounding set = the unit's set");
      assertEquals(field("NoNewPrivs"), "0", "setpriv does not set it; systemd's NoNewPrivileges=yes does");
    });
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
});
