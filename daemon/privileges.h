/* SPDX-License-Identifier: MIT */
#pragma once

/* Least privilege: the unit grants CAP_BPF and CAP_PERFMON only so the scheduler monitor can
 * load; once it is loaded (or has failed to), every capability goes: effective, permitted,
 * inheritable, ambient and the bounding set, so nothing the daemon runs later (or an
 * attacker who gets in) can get them back. In every thread: capabilities are per thread,
 * and a library may have started threads before main() (OpenBLAS does). */

/* 0, or -errno if the kernel refused or a thread still holds one (then the daemon refuses
 * to go on). Uses SIGRTMIN for a moment; call it before anything else uses that. */
int privileges_drop_all(void);

/* CapEff of this process from /proc/self/status, for tests and logs. */
int privileges_effective(unsigned long long *ret);
