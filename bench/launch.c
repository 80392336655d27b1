/* Measure one child process: wall (monotonic), user+sys CPU and peak RSS, via wait4.
 *
 * usage: launch RESULT_FILE CMD [ARGS...]
 * writes "wall_us utime_us stime_us maxrss_kib exit_status" to RESULT_FILE.
 *
 * Why a C launcher: on Linux a child's ru_maxrss starts at the high-water mark of the
 * address space it was forked/vforked from (exec_mmap keeps the max), so a Python harness
 * spawning clients directly would report its own RSS as theirs. Forked from this tiny
 * process, the child's peak RSS is its own. stdin/stdout/stderr are inherited.
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>
#include <sys/resource.h>
#include <sys/time.h>
#include <sys/wait.h>

static long long us(struct timeval tv) { return (long long)tv.tv_sec * 1000000 + tv.tv_usec; }

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: launch RESULT_FILE CMD [ARGS...]\n");
        return 2;
    }
    struct timespec start, end;
    clock_gettime(CLOCK_MONOTONIC, &start);
    pid_t pid = fork();
    if (pid < 0) { perror("fork"); return 2; }
    if (pid == 0) {
        execvp(argv[2], argv + 2);
        perror("execvp");
        _exit(127);
    }
    int status = 0;
    struct rusage ru;
    if (wait4(pid, &status, 0, &ru) < 0) { perror("wait4"); return 2; }
    clock_gettime(CLOCK_MONOTONIC, &end);
    long long wall = (long long)(end.tv_sec - start.tv_sec) * 1000000
                     + (end.tv_nsec - start.tv_nsec) / 1000;
    int code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    FILE *f = fopen(argv[1], "w");
    if (!f) { perror("result file"); return 2; }
    fprintf(f, "%lld %lld %lld %ld %d\n", wall, us(ru.ru_utime), us(ru.ru_stime),
            ru.ru_maxrss, code);
    fclose(f);
    return 0;
}
