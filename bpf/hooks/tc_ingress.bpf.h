/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * tc clsact ingress: client SYNs (JA4T inputs) and the first client->server
 * bytes of new connections (ClientHello, possibly over several segments) for
 * TCP ports in listen_ports. Headers are read relative to the network header,
 * so the L2 type does not matter. IPv6 extension headers are not walked.
 * Always TC_ACT_UNSPEC: the program only observes. TC_ACT_OK would end the
 * classifier chain, so filters after ours (other tools) would never see packets.
 */

/* Plain wire layouts (no CO-RE: these are protocol formats, not kernel structs). */
struct tc_iph {
	__u8 ver_ihl;
	__u8 tos;
	__u16 tot_len;
	__u16 id;
	__u16 frag_off;
	__u8 ttl;
	__u8 protocol;
	__u16 check;
	__u32 saddr;
	__u32 daddr;
};

struct tc_ip6h {
	__u32 ver_tc_flow;
	__u16 payload_len;
	__u8 nexthdr;
	__u8 hop_limit;
	__u8 saddr[16];
	__u8 daddr[16];
};

struct tc_tcph {
	__u16 source;
	__u16 dest;
	__u32 seq;
	__u32 ack_seq;
	__u8 doff_res;
	__u8 flags;
	__u16 window;
	__u16 check;
	__u16 urg_ptr;
};

#define TC_FIN 0x01
#define TC_SYN 0x02
#define TC_RST 0x04
#define TC_ACK 0x10

/* A client->server flow whose SYN was seen (key: struct ja4_flow_key, common.bpf.h). */
struct flow_val {
	__u32 isn;
	__u32 end;  /* stream offset where the first TLS record ends (5 + its length); 0 = not known yet */
	__u32 seen; /* stream bytes [0, seen) were seen without a gap: the flow ends when they cover `end` */
	__u32 _pad;
};
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct ja4_flow_key);
	__type(value, struct flow_val);
} flows SEC(".maps");

/*
 * How many `flows` entries each client port has, at least: tc skips the flows lookup (a hash of the
 * 40-byte key) when the count of a packet's source port is 0 — every request of a plain-HTTP connection
 * after its first, whose flow is gone once its first bytes were seen. Counted up before an entry is
 * created, down after tc deleted one, so a live entry's port never reads 0. An entry the LRU evicts
 * (more than max_entries connections in their first bytes at once) leaves its port's count up: that
 * port's packets pay the lookup they paid before.
 */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, __u32);
} flow_ports SEC(".maps");

static __always_inline void flow_ports_add(__u16 sport, __s32 d)
{
	__u32 k = sport, *c = bpf_map_lookup_elem(&flow_ports, &k);

	if (c)
		__sync_fetch_and_add(c, d);
}

/* A client SYN: its flow starts, or restarts in place (a retransmitted SYN, the port reused). */
static __always_inline void flow_start(const struct ja4_flow_key *fk, __u32 isn)
{
	struct flow_val nv = {.isn = isn}, *fv;

	flow_ports_add(fk->sport, 1);
	if (!bpf_map_update_elem(&flows, fk, &nv, BPF_NOEXIST))
		return;
	flow_ports_add(fk->sport, -1); /* the entry there is counted already */
	fv = bpf_map_lookup_elem(&flows, fk);
	if (fv) {
		*fv = nv;
		return;
	}
	/* deleted in between: create it once more, counted */
	flow_ports_add(fk->sport, 1);
	if (bpf_map_update_elem(&flows, fk, &nv, BPF_NOEXIST)) {
		flow_ports_add(fk->sport, -1);
		count_drop(JA4_DROP_FLOW_FULL);
	}
}

static __always_inline void flow_end(const struct ja4_flow_key *fk)
{
	if (!bpf_map_delete_elem(&flows, fk))
		flow_ports_add(fk->sport, -1);
}

/*
 * x (known to be in [1, pow2]) as a size the verifier can prove non-zero and bounded from the
 * arithmetic alone. clang fuses "x > 0 && x <= max" into one check on a copy ((x - 1) < max):
 * older verifiers (5.10, 6.1, 6.12; not 6.18) lose that bound for x and refuse the helper call with
 * "R? min value is outside of the allowed memory range" / zero-size access (EACCES: 5.10, 6.1, 6.12).
 * The barrier keeps clang from folding the expression back to x.
 */
static __always_inline __u64 tc_nonzero_size(__u64 x, __u64 pow2)
{
	asm volatile("" : "+r"(x));
	return ((x - 1) & (pow2 - 1)) + 1;
}

_Static_assert((JA4_PKT_MAX & (JA4_PKT_MAX - 1)) == 0, "tc_nonzero_size needs a power of two");
_Static_assert(__builtin_offsetof(struct ja4_data_event, syn.options) + 64 <= sizeof(union ja4_scratch_u),
	       "a 64-byte options read stays in the scratch slot");

static __always_inline void tc_fill_hdr(struct ja4_event_hdr *h, __u8 kind, const struct ja4_flow_key *fk)
{
	h->kind = kind;
	h->hook = JA4_HOOK_TC;
	h->family = fk->family;
	h->flags = 0;
	h->pid = 0;
	h->tid = 0;
	h->fd = -1;
	h->ts_ns = bpf_ktime_get_ns();
	__builtin_memset(h->comm, 0, sizeof(h->comm));
	__builtin_memcpy(h->saddr, fk->saddr, 16);
	__builtin_memcpy(h->daddr, fk->daddr, 16);
	h->sport = fk->sport;
	h->dport = fk->dport;
	h->data_len = 0;
	h->total = 0;
	h->offset = 0;
}

/*
 * Bytes of the IP packet at `at` (from its network header) into `dst`. Payload often sits in page frags
 * (loopback, GRO): bpf_skb_load_bytes reads them where they are, from skb->data (the L2 header at tc
 * ingress), so the L2 length is needed: what the skb holds beyond the IP packet (`l2`, checked by the
 * caller against the IP header). Where that is not known (l2 < 0) the head is linearised up to what is
 * read (bpf_skb_pull_data: a reallocation of a paged skb's head) and read relative to the network header.
 */
static __always_inline long tc_load(struct __sk_buff *skb, int l2, __u32 at, void *dst, __u32 n)
{
	if (l2 >= 0)
		return bpf_skb_load_bytes(skb, l2 + at, dst, n);
	__u32 want = at + n + 64; /* + 64 for any L2 header */
	if (want > skb->len)
		want = skb->len;
	bpf_skb_pull_data(skb, want);
	return bpf_skb_load_bytes_relative(skb, at, dst, n, BPF_HDR_START_NET);
}

/* The L2 header's length (skb->len less the IP packet's), if the IP header's first word is found there. */
static __always_inline int tc_l2_len(struct __sk_buff *skb, __u32 l3_len, __u32 word0)
{
	__u32 l2 = skb->len - l3_len, got;

	if (skb->len < l3_len || l2 > 64 || bpf_skb_load_bytes(skb, l2, &got, sizeof(got)) || got != word0)
		return -1;
	return l2;
}

SEC("tc")
int tc_ingress(struct __sk_buff *skb)
{
	struct ja4_flow_key fk = {};
	struct tc_tcph th;
	struct flow_val *fv;
	__u32 ip_hlen, doff, payload, off, port, *live, budget = tc_capture_bytes;
	__u8 *watched;
	__u64 n;
	__u16 proto = bpf_ntohs((__u16)skb->protocol);
	__u16 ip_len;
	__u8 ttl, ip_flags = 0;
	__u32 l3_len, word0; /* the IP packet's length, and its header's first 4 bytes as read */

	/* One helper call for the IP and TCP headers together in the common case (no IP options): every
	 * packet on the interface, the server's own replies included, passes here. */
	if (proto == JA4_ETH_P_IP) {
		struct {
			struct tc_iph ip;
			struct tc_tcph th;
		} h4;
		struct tc_iph ip;
		if (bpf_skb_load_bytes_relative(skb, 0, &h4, sizeof(h4), BPF_HDR_START_NET))
			return JA4_TC_ACT_UNSPEC;
		ip = h4.ip;
		th = h4.th;
		if (ip.protocol != JA4_IPPROTO_TCP || (bpf_ntohs(ip.frag_off) & 0x1fff))
			return JA4_TC_ACT_UNSPEC;
		ip_hlen = (ip.ver_ihl & 0x0f) * 4;
		if (ip_hlen < sizeof(ip))
			return JA4_TC_ACT_UNSPEC;
		fk.family = JA4_AF_INET;
		__builtin_memcpy(fk.saddr, &ip.saddr, 4);
		__builtin_memcpy(fk.daddr, &ip.daddr, 4);
		ttl = ip.ttl;
		ip_len = bpf_ntohs(ip.tot_len);
		ip_flags = bpf_ntohs(ip.frag_off) >> 13;
		l3_len = ip_len;
		__builtin_memcpy(&word0, &ip, sizeof(word0));
		payload = ip_len;
		if (payload < ip_hlen)
			return JA4_TC_ACT_UNSPEC;
		payload -= ip_hlen;
	} else if (proto == JA4_ETH_P_IPV6) {
		struct {
			struct tc_ip6h ip6;
			struct tc_tcph th;
		} h6;
		struct tc_ip6h ip6;
		if (bpf_skb_load_bytes_relative(skb, 0, &h6, sizeof(h6), BPF_HDR_START_NET))
			return JA4_TC_ACT_UNSPEC;
		ip6 = h6.ip6;
		th = h6.th;
		if (ip6.nexthdr != JA4_IPPROTO_TCP)
			return JA4_TC_ACT_UNSPEC;
		ip_hlen = sizeof(ip6);
		fk.family = JA4_AF_INET6;
		__builtin_memcpy(fk.saddr, ip6.saddr, 16);
		__builtin_memcpy(fk.daddr, ip6.daddr, 16);
		ttl = ip6.hop_limit;
		ip_len = bpf_ntohs(ip6.payload_len);
		payload = ip_len;
		l3_len = sizeof(ip6) + ip_len;
		word0 = ip6.ver_tc_flow;
	} else {
		return JA4_TC_ACT_UNSPEC;
	}
	/* IPv4 options: the TCP header starts later */
	if (ip_hlen != sizeof(struct tc_iph) && proto == JA4_ETH_P_IP &&
	    bpf_skb_load_bytes_relative(skb, ip_hlen, &th, sizeof(th), BPF_HDR_START_NET))
		return JA4_TC_ACT_UNSPEC;
	doff = (th.doff_res >> 4) * 4;
	if (doff < sizeof(th) || payload < doff)
		return JA4_TC_ACT_UNSPEC;
	payload -= doff;
	/* A bare ACK carries nothing and ends nothing: decided before any map lookup (half the packets of a
	 * connection, both directions on loopback). The two lookups after it are array reads the verifier
	 * inlines; the flows hash is looked up only for ports that have a flow. */
	if (payload == 0 && !(th.flags & (TC_SYN | TC_FIN | TC_RST)))
		return JA4_TC_ACT_UNSPEC;
	port = bpf_ntohs(th.dest);
	watched = bpf_map_lookup_elem(&listen_ports, &port);
	if (!watched || !*watched)
		return JA4_TC_ACT_UNSPEC;
	fk.dport = port;
	fk.sport = bpf_ntohs(th.source);

	if ((th.flags & (TC_SYN | TC_ACK)) == TC_SYN) {
		/* built in the scratch slot: a 64-byte options read needs room past options[40] */
		struct ja4_data_event *ev = scratch_get(SCRATCH_TC);
		struct ja4_syn_facts *f;
		__u32 opt_len = doff - sizeof(th);

		/* A port whose connections begin in plain text (HTTP): nothing to follow to a ClientHello, so no
		 * flow to create here and delete at the first byte (two LRU updates per connection). */
		if (*watched != JA4_PORT_PLAIN)
			flow_start(&fk, bpf_ntohl(th.seq));
		if (!ev)
			return JA4_TC_ACT_UNSPEC;
		f = &ev->syn;
		f->ts_ns = bpf_ktime_get_ns();
		f->seq = bpf_ntohl(th.seq);
		f->window = bpf_ntohs(th.window);
		f->ttl = ttl;
		f->ip_len = ip_len;
		f->ip_flags = ip_flags;
		f->tcp_flags = th.flags;
		f->_pad0 = 0;
		f->opt_len = 0;
		__builtin_memset(f->options, 0, sizeof(f->options));
		if (opt_len > 0 && opt_len <= JA4_TCP_OPT_MAX) {
			/* [1, 64]: exactly opt_len is read */
			if (bpf_skb_load_bytes_relative(skb, ip_hlen + sizeof(th), f->options,
							tc_nonzero_size(opt_len, 64), BPF_HDR_START_NET))
				count_drop(JA4_DROP_SKB_LOAD);
			else
				f->opt_len = opt_len;
		}
		/* for the server's first read of the connection (syn_take); a retransmitted SYN or a reused
		 * port replaces what was there */
		if (bpf_map_update_elem(&syn_facts, &fk, f, BPF_ANY))
			count_drop(JA4_DROP_FLOW_FULL);
		return JA4_TC_ACT_UNSPEC;
	}

	port = fk.sport;
	live = bpf_map_lookup_elem(&flow_ports, &port);
	if (!live || !*live)
		return JA4_TC_ACT_UNSPEC; /* no flow from this port: the connection's first bytes were seen */
	fv = bpf_map_lookup_elem(&flows, &fk);
	if (!fv)
		return JA4_TC_ACT_UNSPEC;
	if (payload > 0) {
		struct ja4_pkt_event *ev;
		__u32 seq = bpf_ntohl(th.seq);
		bool kept = true; /* false: this segment's bytes were wanted but not sent (a retransmit may be) */

		if (budget > JA4_PKT_MAX)
			budget = JA4_PKT_MAX;
		if (fv->end && budget > fv->end)
			budget = fv->end; /* the ClientHello's record is all user space needs */
		off = seq - (fv->isn + 1); /* wraps to huge for data before the ISN: skipped */
		if (off < budget) {
			int l2 = tc_l2_len(skb, l3_len, word0);

			/* The stream's first byte decides (as user space does: 16 03 starts a TLS handshake
			 * record). Not TLS (plain HTTP): no event at all — user space has nothing to
			 * fingerprint in it, and the request side already knows the connection is plain — and
			 * the flow is forgotten so the rest of the connection costs nothing. One byte read: a
			 * plain connection's first segment is not copied. */
			if (off == 0) {
				__u8 first = 0;

				if (tc_load(skb, l2, ip_hlen + doff, &first, 1)) {
					count_drop(JA4_DROP_SKB_LOAD);
					goto end; /* nothing learnt: a retransmit may tell */
				}
				if (first != 0x16) {
					flow_end(&fk);
					/* one more plain connection in a row: after JA4_PORT_PLAIN_AFTER the port's
					 * SYNs make no flow (a race between CPUs miscounts by one, harmlessly) */
					if (*watched < JA4_PORT_PLAIN_AFTER)
						*watched += 1;
					else if (*watched != JA4_PORT_PLAIN)
						*watched = JA4_PORT_PLAIN;
					return JA4_TC_ACT_UNSPEC;
				}
				if (*watched > JA4_PORT_WATCHED)
					*watched = JA4_PORT_WATCHED; /* TLS: the count starts over */
			}
			n = payload;
			if (n > budget - off)
				n = budget - off;
			/* hide what the compiler knows so the checks the verifier needs stay */
			asm volatile("" : "+r"(n));
			ev = scratch_get(SCRATCH_TC);
			kept = false;
			if (ev && n > 0 && n <= JA4_PKT_MAX) {
				tc_fill_hdr(&ev->hdr, JA4_EV_PKT, &fk);
				ev->seq = seq;
				ev->_pad0 = 0;
				ev->hdr.total = payload;
				ev->hdr.offset = off;
				if (n < payload)
					ev->hdr.flags |= JA4_F_TRUNCATED;
				n = tc_nonzero_size(n, JA4_PKT_MAX); /* JA4_PKT_MAX is a power of two */
				if (tc_load(skb, l2, ip_hlen + doff, ev->data, n)) {
					count_drop(JA4_DROP_SKB_LOAD);
				} else {
					/* TLS (its first byte, 16, was read above): stop at the end of the first
					 * record. Only the segment at offset 0 decides; a later one arriving first
					 * is sent. */
					if (off == 0) {
						if (n >= 2 && ev->data[1] != 0x03) {
							flow_end(&fk);
							return JA4_TC_ACT_UNSPEC;
						}
						if (n >= 5)
							fv->end = 5 + ((__u32)ev->data[3] << 8 | ev->data[4]);
					}
					ev->hdr.data_len = n;
					ja4_output(skb, ev, offsetof(struct ja4_pkt_event, data) + n);
					kept = true;
				}
			}
		}
		/* Once the first record's bytes were all seen, in order, the flow ends: the connection's
		 * later packets (every request of a TLS keep-alive connection) stop at flow_ports. A hole
		 * (a segment lost before tc, or reordered) keeps it to FIN/RST, for the retransmit. */
		if (kept && off <= fv->seen && off + payload > fv->seen)
			fv->seen = off + payload;
		if (fv->end && fv->seen >= fv->end) {
			flow_end(&fk);
			return JA4_TC_ACT_UNSPEC;
		}
	}
end:
	if (th.flags & (TC_FIN | TC_RST))
		flow_end(&fk);
	return JA4_TC_ACT_UNSPEC;
}
