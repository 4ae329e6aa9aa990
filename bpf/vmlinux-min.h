/* SPDX-License-Identifier: MIT */
/* The few kernel types monitor.bpf.c uses, for build hosts without /sys/kernel/btf/vmlinux
 * (the Makefile copies this in place of the generated vmlinux.h). Layouts need not match any
 * kernel: every struct is preserve_access_index, so libbpf relocates each field access
 * against the target kernel's BTF at load time. Enum values are uapi and fixed. */
#ifndef __VMLINUX_H__
#define __VMLINUX_H__

typedef signed char __s8;
typedef unsigned char __u8;
typedef short __s16;
typedef unsigned short __u16;
typedef int __s32;
typedef unsigned int __u32;
typedef long long __s64;
typedef unsigned long long __u64;

typedef __s8 s8;
typedef __u8 u8;
typedef __s16 s16;
typedef __u16 u16;
typedef __s32 s32;
typedef __u32 u32;
typedef __s64 s64;
typedef __u64 u64;

/* bpf_helper_defs.h names these in prototypes. */
typedef __u16 __be16;
typedef __u32 __be32;
typedef __u32 __wsum;

typedef _Bool bool;
enum {
        false = 0,
        true = 1,
};

typedef int __kernel_pid_t;
typedef __kernel_pid_t pid_t;

enum bpf_map_type {
        BPF_MAP_TYPE_UNSPEC = 0,
        BPF_MAP_TYPE_HASH = 1,
        BPF_MAP_TYPE_ARRAY = 2,
        BPF_MAP_TYPE_PERCPU_ARRAY = 6,
        BPF_MAP_TYPE_LRU_HASH = 9,
};

enum {
        BPF_ANY = 0,
        BPF_NOEXIST = 1,
        BPF_EXIST = 2,
        BPF_F_LOCK = 4,
};

enum {
        BPF_F_MMAPABLE = 1024,
};

struct sched_info {
        unsigned long long last_arrival;
        unsigned long long last_queued;
} __attribute__((preserve_access_index));

struct task_struct {
        unsigned int __state; /* "long state" before 5.14: see task_struct___pre514 */
        int on_cpu;
        struct sched_info sched_info; /* CONFIG_SCHED_INFO */
        pid_t pid;
        pid_t tgid;
} __attribute__((preserve_access_index));

#endif /* __VMLINUX_H__ */
