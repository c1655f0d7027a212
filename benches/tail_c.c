/* The C tailer's side of benches/tail_latency.rs (built by the bench with gcc against
 * libmapq_tail.so). Prints "ready", then:
 *   tail_c latency spin|block DATA_DIR N   "p50 p99 p999 max" of the one-way latency in ns
 *                                           (each value starts with its send time,
 *                                           CLOCK_MONOTONIC ns, little-endian)
 *   tail_c throughput DATA_DIR             "records ns" to read the whole log once
 */
#define _POSIX_C_SOURCE 199309L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "mapq_tail.h"

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static int cmp(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static mapq_tailer *open_or_die(const char *dir, mapq_tail_options *o) {
    mapq_tailer *t;
    int rc = mapq_tail_open(dir, "t", 0, o, &t);
    if (rc != MAPQ_TAIL_OK) {
        fprintf(stderr, "open: %d %s\n", rc, mapq_tail_error());
        exit(1);
    }
    return t;
}

int main(int argc, char **argv) {
    if (argc >= 5 && strcmp(argv[1], "latency") == 0) {
        mapq_tail_options o = mapq_tail_options_default();
        o.from = MAPQ_TAIL_FROM_LATEST;
        o.follow = true;
        o.spin = strcmp(argv[2], "spin") == 0;
        mapq_tailer *t = open_or_die(argv[3], &o);
        long n = atol(argv[4]);
        uint64_t *lat = malloc(sizeof(uint64_t) * (size_t)n);
        puts("ready");
        fflush(stdout);
        mapq_record r;
        for (long i = 0; i < n; i++) {
            int rc = mapq_tail_next(t, -1, &r);
            if (rc != MAPQ_TAIL_OK) {
                fprintf(stderr, "next: %d %s\n", rc, mapq_tail_error());
                return 1;
            }
            uint64_t now = now_ns(), sent;
            memcpy(&sent, r.value, 8);
            lat[i] = now > sent ? now - sent : 1;
        }
        qsort(lat, (size_t)n, sizeof(uint64_t), cmp);
        printf("%llu %llu %llu %llu\n", (unsigned long long)lat[n / 2],
               (unsigned long long)lat[(n * 99) / 100], (unsigned long long)lat[(n * 999) / 1000],
               (unsigned long long)lat[n - 1]);
        mapq_tail_close(t);
        return 0;
    }
    if (argc >= 3 && strcmp(argv[1], "throughput") == 0) {
        mapq_tailer *t = open_or_die(argv[2], NULL);
        puts("ready");
        fflush(stdout);
        uint64_t start = now_ns(), n = 0, sum = 0;
        mapq_record r;
        while (mapq_tail_next(t, 0, &r) == MAPQ_TAIL_OK) {
            sum += r.value[0];
            n++;
        }
        uint64_t took = now_ns() - start;
        printf("%llu %llu\n", (unsigned long long)n, (unsigned long long)took);
        fprintf(stderr, "checksum %llu\n", (unsigned long long)sum);
        mapq_tail_close(t);
        return 0;
    }
    fprintf(stderr, "usage: tail_c latency spin|block DIR N | throughput DIR\n");
    return 2;
}
