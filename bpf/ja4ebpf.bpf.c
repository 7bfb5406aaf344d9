// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * ja4ebpf BPF object: every program and map in one compilation unit.
 * The contract with user space (program, map and variable names, event
 * layouts) is documented in docs/bpf.md.
 */
#include "common.bpf.h"
#include "hooks/syscalls.bpf.h"
#include "hooks/apache_apr.bpf.h"
#include "hooks/tls_ssl.bpf.h"
#include "hooks/tc_ingress.bpf.h"
#include "hooks/follow.bpf.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";
