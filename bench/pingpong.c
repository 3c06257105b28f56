/* pingpong.c: a context-switch workload with no traced syscall (bench/sched_ab.py --mode futex).
 *
 * Two processes pinned to one CPU hand a token back and forth through a shared word and
 * futex(2) wait/wake: every round trip is two wakeups and two context switches, and the only
 * syscall is futex, which tenantwatch does not trace.  So what the probes add here is the
 * sched_switch / sched_wakeup programs alone.
 *
 * usage: pingpong SECONDS CPU   (waits for one line on stdin before it starts; prints round
 * trips per second)
 */
#define _GNU_SOURCE
#include <linux/futex.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static long futex(volatile int *addr, int op, int val)
{
	return syscall(SYS_futex, addr, op, val, NULL, NULL, 0);
}

/* The echo side: wait until *turn is 1, hand it back (0), until *stop. */
static void echo(volatile int *turn, volatile int *stop)
{
	for (;;) {
		while (*turn != 1) {
			if (*stop)
				return;
			futex(turn, FUTEX_WAIT, 0);
		}
		if (*stop)
			return;
		*turn = 0;
		futex(turn, FUTEX_WAKE, 1);
	}
}

static double now(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec + t.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
	if (argc < 3)
		return 2;
	double seconds = atof(argv[1]);
	int cpu = atoi(argv[2]);
	if (cpu >= 0) {
		cpu_set_t set;
		CPU_ZERO(&set);
		CPU_SET(cpu, &set);
		if (sched_setaffinity(0, sizeof(set), &set) != 0)
			return 3;
	}
	char line[16];
	if (!fgets(line, sizeof(line), stdin))
		return 4;
	volatile int *shared = mmap(NULL, 4096, PROT_READ | PROT_WRITE,
				    MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (shared == MAP_FAILED)
		return 5;
	volatile int *turn = &shared[0], *stop = &shared[1];
	pid_t child = fork();
	if (child == 0) {
		echo(turn, stop);
		_exit(0);
	}
	long count = 0;
	double t0 = now();
	while (now() - t0 < seconds) {
		long before = count;
		while (count - before < 1000) {
			while (*turn != 0)
				futex(turn, FUTEX_WAIT, 1);
			*turn = 1;
			futex(turn, FUTEX_WAKE, 1);
			count++;
		}
	}
	double elapsed = now() - t0;
	*stop = 1;
	*turn = 1;
	futex(turn, FUTEX_WAKE, 1);
	waitpid(child, NULL, 0);
	printf("%.0f\n", count / elapsed);
	return 0;
}
