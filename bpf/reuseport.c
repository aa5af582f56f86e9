// SK_REUSEPORT program: spread the datagrams of a listener over the sockets of ALL workers of
// the cluster, one after the other, whatever their 4-tuple (the kernel's default hash sends
// everything from one exporter to one socket).
//
// The loader fills in two numbers before compiling:
//   SOCKARRAY_FD  fd of the REUSEPORT_SOCKARRAY map (created and pinned from Python: bcc 0.26
//                 cannot declare that map type), socket of worker i at index i
//   WORKERS       number of workers in the cluster (the map's size)

#include <uapi/linux/bpf.h>

// One counter per CPU: no atomic operation and no cache line shared between CPUs. Each CPU
// goes round-robin on its own, which is even overall as soon as a CPU sees more than a few
// datagrams.
BPF_PERCPU_ARRAY(next_socket, u32, 1);

int select_socket(struct sk_reuseport_md *md)
{
    u32 zero = 0;
    u32 *counter = next_socket.lookup(&zero);
    if (!counter)
        return SK_PASS;
    u32 index = *counter;
    *counter = index + 1 >= WORKERS ? 0 : index + 1;
    // An empty slot (a worker not started yet, or gone) fails the selection: SK_PASS without
    // a selection lets the kernel's hash choose, so the datagram is still delivered.
    bpf_sk_select_reuseport(md, (void *)bpf_pseudo_fd(1, SOCKARRAY_FD), &index, 0);
    return SK_PASS;
}
