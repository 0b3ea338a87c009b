// SPDX-License-Identifier: GPL-2.0
// netplane's overlay fast path: pod <-> remote pod TCP/UDP without the node's IP forwarding.
//
// Two tc ingress programs (tcx links held by the agent) in a node's network namespace:
//   np_from_pod      on each pod's host veth: a packet from the pod to a remote node's podCIDR
//                    gets the remote VTEP MAC and is redirected to the vxlan device's egress;
//   np_from_overlay  on the vxlan device: a decapsulated packet to a pod of this node gets the
//                    pod's MAC and is redirected into the pod's namespace (bpf_redirect_peer).
// Both skip, for these packets only, what the node would do between the two devices: the
// netfilter hooks, the route lookup, ip_forward and (on the way in) a backlog queue.
//
// Why that is safe: the node's netfilter may only be skipped for packets it would not change.
// kube-proxy style NAT (DNAT to an endpoint, masquerade) and portmap's DNAT happen to a
// connection's first packet, whose destination is a service, node or host address, never a
// pod's: those packets do not match here and take the normal path, where conntrack records
// the NAT. Every later packet of such a connection, both ways, is found in conntrack
// (bpf_skb_ct_lookup) and left to the normal path too. So only connections conntrack has never
// seen are fast: plain pod <-> pod traffic, which needs nothing from the node. Anything else
// (ICMP, IP options, fragments, TTL about to expire, too big for the next device, non-IPv4)
// takes the normal path as well.
// The agent fills the maps (netplane.ebpf.overlay_fastpath); an empty map means "normal path".

#include <linux/bpf.h>
#include <linux/errno.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

// The kernel's conntrack kfuncs (net/netfilter/nf_conntrack_bpf.c). libbpf checks these
// prototypes against the kernel's BTF: struct kinds must match, members are not compared.
struct nf_conn {
	__u64 opaque;
};
// The 12-byte layout every kernel with these kfuncs accepts (6.11 added zone fields after it,
// which this program does not need, and still takes 12; earlier kernels take only 12).
struct bpf_ct_opts {
	__s32 netns_id;
	__s32 error;
	__u8 l4proto;
	__u8 dir;
	__u8 reserved[2];
};
extern struct nf_conn *bpf_skb_ct_lookup(struct __sk_buff *skb, struct bpf_sock_tuple *tuple, __u32 tuple_sz,
					 struct bpf_ct_opts *opts, __u32 opts_sz) __ksym;
extern void bpf_ct_release(struct nf_conn *ct) __ksym;

#define NEXT (-1) // TCX_NEXT: not ours; the next tc program or qdisc (e.g. bandwidth's) sees it
#define CURRENT_NETNS (-1)
#define IP_FRAGMENTED 0x3fff // MF flag + fragment offset
#define IP_CSUM_OFF (ETH_HLEN + __builtin_offsetof(struct iphdr, check))

struct local_pod {
	__u32 host_ifindex; // the pod's host veth; its peer is the pod's interface
	__u8 pod_mac[ETH_ALEN];
	__u8 host_mac[ETH_ALEN];
};

struct cidr_key {
	__u32 prefixlen;
	__u32 addr; // network byte order
};

struct remote_node {
	__u8 vtep_mac[ETH_ALEN];
	__u8 pad[2];
};

struct overlay_dev {
	__u32 ifindex;
	__u8 mac[ETH_ALEN];
	__u8 pad[2];
};

enum stat {
	STAT_TO_OVERLAY,   // np_from_pod redirected a packet to the vxlan device
	STAT_FROM_OVERLAY, // np_from_overlay redirected a packet into a pod
	STAT_CONNTRACKED,  // a candidate left to the normal path: conntrack knows its connection
	STAT_LOOKUP_FAILED, // a candidate left to the normal path: the conntrack lookup failed
	STAT_NOT_FROM_POD, // np_from_pod: the source is not the address of the pod behind this veth
	STAT_MAX,
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32); // pod IPv4, network byte order
	__type(value, struct local_pod);
} np_local_pods SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 4096);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct cidr_key);
	__type(value, struct remote_node);
} np_remote_cidrs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct overlay_dev);
} np_overlay_dev SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} np_stats SEC(".maps");

static __always_inline void count(__u32 which)
{
	__u64 *n = bpf_map_lookup_elem(&np_stats, &which);

	if (n)
		*n += 1;
}

// The IPv4 header of a TCP/UDP packet this program may forward, or NULL; fills the tuple.
static __always_inline struct iphdr *candidate(struct __sk_buff *skb, struct bpf_sock_tuple *tuple)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = data + sizeof(*eth);
	__be16 *ports = data + sizeof(*eth) + sizeof(*ip);

	if ((void *)(ports + 2) > end)
		return NULL;
	if (eth->h_proto != bpf_htons(ETH_P_IP) || ip->ihl != 5 || ip->ttl <= 1 ||
	    (ip->frag_off & bpf_htons(IP_FRAGMENTED)))
		return NULL;
	if (ip->protocol != IPPROTO_TCP && ip->protocol != IPPROTO_UDP)
		return NULL;
	tuple->ipv4.saddr = ip->saddr;
	tuple->ipv4.daddr = ip->daddr;
	tuple->ipv4.sport = ports[0];
	tuple->ipv4.dport = ports[1];
	return ip;
}

// True when the packet (each segment, for GSO) fits the MTU of the device it is sent to. What does
// not fit takes the normal path, whose forwarding answers "fragmentation needed" as it should.
static __always_inline int fits(struct __sk_buff *skb, __u32 ifindex)
{
	__u32 mtu_len = 0;

	return bpf_check_mtu(skb, ifindex, &mtu_len, 0, 0) == BPF_MTU_CHK_RET_SUCCESS;
}

// True when conntrack has an entry for the packet's connection (either direction), and also
// when the lookup itself failed: only "no such connection" (-ENOENT) lets a packet through.
static __always_inline int conntracked(struct __sk_buff *skb, struct bpf_sock_tuple *tuple, __u8 proto)
{
	struct bpf_ct_opts opts = {.netns_id = CURRENT_NETNS, .l4proto = proto};
	struct nf_conn *ct = bpf_skb_ct_lookup(skb, tuple, sizeof(tuple->ipv4), &opts, sizeof(opts));

	if (!ct) {
		if (opts.error == -ENOENT)
			return 0;
		count(STAT_LOOKUP_FAILED);
		return 1;
	}
	bpf_ct_release(ct);
	count(STAT_CONNTRACKED);
	return 1;
}

// What the node's forwarding would do to the headers: new MACs, TTL - 1. Last, because the
// checksum helper invalidates every packet pointer.
static __always_inline int rewrite(struct __sk_buff *skb, const __u8 *dst_mac, const __u8 *src_mac)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = data + sizeof(*eth);
	__be16 old, new;

	if ((void *)(ip + 1) > end)
		return -1;
	__builtin_memcpy(eth->h_dest, dst_mac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, src_mac, ETH_ALEN);
	old = *(__be16 *)&ip->ttl; // TTL and protocol share a 16-bit checksum word
	ip->ttl -= 1;
	new = *(__be16 *)&ip->ttl;
	return bpf_l3_csum_replace(skb, IP_CSUM_OFF, old, new, sizeof(new));
}

SEC("tc")
int np_from_pod(struct __sk_buff *skb)
{
	struct bpf_sock_tuple tuple = {};
	struct cidr_key key = {.prefixlen = 32};
	struct remote_node *remote;
	struct local_pod *self;
	struct overlay_dev *dev;
	struct iphdr *ip;
	__u32 zero = 0;
	__u8 proto;

	ip = candidate(skb, &tuple);
	if (!ip)
		return NEXT;
	proto = ip->protocol;
	// Only the pod's own address leaves this way (the normal path has no such check when the
	// node's rp_filter is off; the shortcut must not be a way around one when it is on).
	self = bpf_map_lookup_elem(&np_local_pods, &tuple.ipv4.saddr);
	if (!self || self->host_ifindex != skb->ifindex) {
		count(STAT_NOT_FROM_POD);
		return NEXT;
	}
	key.addr = tuple.ipv4.daddr;
	remote = bpf_map_lookup_elem(&np_remote_cidrs, &key);
	dev = bpf_map_lookup_elem(&np_overlay_dev, &zero);
	if (!remote || !dev || !dev->ifindex)
		return NEXT;
	if (!fits(skb, dev->ifindex) || conntracked(skb, &tuple, proto))
		return NEXT;
	if (rewrite(skb, remote->vtep_mac, dev->mac))
		return NEXT;
	count(STAT_TO_OVERLAY);
	return bpf_redirect(dev->ifindex, 0);
}

SEC("tc")
int np_from_overlay(struct __sk_buff *skb)
{
	struct bpf_sock_tuple tuple = {};
	struct local_pod *pod;
	struct iphdr *ip;
	__u8 proto;

	ip = candidate(skb, &tuple);
	if (!ip)
		return NEXT;
	proto = ip->protocol;
	pod = bpf_map_lookup_elem(&np_local_pods, &tuple.ipv4.daddr);
	if (!pod)
		return NEXT;
	if (!fits(skb, pod->host_ifindex) || conntracked(skb, &tuple, proto))
		return NEXT;
	if (rewrite(skb, pod->pod_mac, pod->host_mac))
		return NEXT;
	count(STAT_FROM_OVERLAY);
	return bpf_redirect_peer(pod->host_ifindex, 0);
}

char LICENSE[] SEC("license") = "GPL";
