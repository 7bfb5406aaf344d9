/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* Shims for kernel differences, resolved by CO-RE at load time. */
#ifndef JA4_CORE_FIXES_BPF_H
#define JA4_CORE_FIXES_BPF_H

/*
 * Contexts of the syscalls:sys_{enter,exit}_* tracepoints. The `___ja4` flavour
 * makes libbpf relocate field offsets against the running kernel's own
 * `struct syscall_trace_{enter,exit}`. Do NOT use `trace_event_raw_sys_exit`
 * (the record of raw_syscalls:sys_exit: `long id` instead of `int nr`): on
 * kernels whose `struct trace_entry` is wider (RHEL 9's PREEMPT_LAZY backport)
 * its `ret` relocates past the 24-byte syscall record and attaching fails with
 * EACCES (max_ctx_offset check in perf_event_set_bpf_prog; bcc PR #4920).
 */
struct syscall_trace_enter___ja4 {
	struct trace_entry ent;
	int nr;
	unsigned long args[6];
} __attribute__((preserve_access_index));

struct syscall_trace_exit___ja4 {
	struct trace_entry ent;
	int nr;
	long ret;
} __attribute__((preserve_access_index));

/* Syscall number from the pt_regs of raw_tp/tp_btf sys_exit. */
static __always_inline long ja4_regs_syscall_nr(struct pt_regs *regs)
{
#if defined(__TARGET_ARCH_x86)
	return BPF_CORE_READ(regs, orig_ax);
#elif defined(__TARGET_ARCH_arm64)
	return BPF_CORE_READ(regs, syscallno); /* needs an arm64 vmlinux.h */
#else
	return -1;
#endif
}

#endif
