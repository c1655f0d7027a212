/* A C program on mapq's C tailer (src/capi/include/mapq_tail.h), for tests/tail_ffi.rs.
 *
 *   tail_c follow DATA_DIR TOPIC PARTITION COUNT   prints COUNT records, following, as
 *                                                  "offset key value headers" lines (hex,
 *                                                  "-" for null, a JSON value marked "j"),
 *                                                  then exits 0
 *   tail_c errors DATA_DIR TOPIC                   prints the code of each bad open
 *   tail_c deleted DATA_DIR TOPIC                  follows until the topic is deleted and
 *                                                  prints the code then
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mapq_tail.h"

static void hex(const uint8_t *p, size_t n, int null) {
    if (null) {
        fputs("-", stdout);
        return;
    }
    putchar('x'); /* so that an empty value is not an empty word */
    for (size_t i = 0; i < n; i++) printf("%02x", p[i]);
}

static int follow(const char *dir, const char *topic, uint32_t partition, long count) {
    mapq_tail_options o = mapq_tail_options_default();
    o.follow = true;
    mapq_tailer *t;
    int rc = mapq_tail_open(dir, topic, partition, &o, &t);
    if (rc != MAPQ_TAIL_OK) {
        fprintf(stderr, "open: %d %s\n", rc, mapq_tail_error());
        return 1;
    }
    long seen = 0, idle = 0;
    mapq_record r;
    while (seen < count) {
        rc = mapq_tail_next(t, 100, &r);
        if (rc == MAPQ_TAIL_TIMEOUT) {
            if (++idle > 600) { /* 60 s without a record */
                fprintf(stderr, "no record for 60 s after %ld\n", seen);
                return 1;
            }
            continue;
        }
        if (rc != MAPQ_TAIL_OK) {
            fprintf(stderr, "next: %d %s\n", rc, mapq_tail_error());
            return 1;
        }
        idle = 0;
        printf("%llu %lld ", (unsigned long long)r.offset, (long long)r.timestamp_ms);
        hex(r.key, r.key_len, r.key == NULL);
        putchar(' ');
        if (r.flags & MAPQ_RECORD_VALUE_JSON) putchar('j');
        hex(r.value, r.value_len, r.value == NULL);
        putchar(' ');
        for (uint32_t i = 0; i < r.header_count; i++) {
            mapq_header h;
            if (mapq_record_header(&r, i, &h) != MAPQ_TAIL_OK) {
                fprintf(stderr, "header %u: %s\n", i, mapq_tail_error());
                return 1;
            }
            if (i) putchar(',');
            hex(h.name, h.name_len, 0);
            putchar('=');
            hex(h.value, h.value_len, h.value == NULL);
        }
        putchar('\n');
        seen++;
    }
    /* A header past the last one is an error, not a read past the record. */
    mapq_header none;
    if (mapq_record_header(&r, r.header_count, &none) != MAPQ_TAIL_ERR_ARGUMENT) {
        fprintf(stderr, "a header past the last one was returned\n");
        return 1;
    }
    mapq_tail_close(t);
    fflush(stdout);
    return 0;
}

static void try_open(const char *what, const char *dir, const char *topic, uint32_t partition) {
    mapq_tailer *t = NULL;
    int rc = mapq_tail_open(dir, topic, partition, NULL, &t);
    printf("%s %d %s\n", what, rc, mapq_tail_error());
    mapq_tail_close(t);
}

int main(int argc, char **argv) {
    if (argc >= 6 && strcmp(argv[1], "follow") == 0)
        return follow(argv[2], argv[3], (uint32_t)atoi(argv[4]), atol(argv[5]));
    if (argc >= 4 && strcmp(argv[1], "errors") == 0) {
        try_open("not_a_data_dir", "/proc/self", argv[3], 0);
        try_open("no_topic", argv[2], "no-such-topic", 0);
        try_open("no_partition", argv[2], argv[3], 99);
        try_open("null_topic", argv[2], NULL, 0);
        mapq_tail_options o = mapq_tail_options_default();
        o.from = 7;
        mapq_tailer *t = NULL;
        printf("bad_option %d %s\n", mapq_tail_open(argv[2], argv[3], 0, &o, &t), mapq_tail_error());
        o = mapq_tail_options_default();
        o.from = MAPQ_TAIL_FROM_OFFSET;
        o.from_value = 1000000;
        printf("beyond_end %d %s\n", mapq_tail_open(argv[2], argv[3], 0, &o, &t), mapq_tail_error());
        printf("null_tailer %d\n", mapq_tail_next(NULL, 0, NULL));
        /* Not following, from offset 2, in batches: to the end, then MAPQ_TAIL_END. */
        o = mapq_tail_options_default();
        o.from = MAPQ_TAIL_FROM_OFFSET;
        o.from_value = 2;
        if (mapq_tail_open(argv[2], argv[3], 0, &o, &t) != MAPQ_TAIL_OK) return 1;
        mapq_record batch[8];
        size_t n = 0, got = 0;
        unsigned long long first = 0;
        int rc;
        while ((rc = mapq_tail_next_batch(t, 0, batch, 8, &n)) == MAPQ_TAIL_OK) {
            if (!got) first = batch[0].offset;
            got += n;
        }
        printf("from_offset_batches %d %zu %llu\n", rc, got, first);
        mapq_tail_close(t);
        /* Following from the end, a timeout of 0: no record, MAPQ_TAIL_TIMEOUT at once. */
        o = mapq_tail_options_default();
        o.from = MAPQ_TAIL_FROM_LATEST;
        o.follow = 1;
        if (mapq_tail_open(argv[2], argv[3], 0, &o, &t) != MAPQ_TAIL_OK) return 1;
        printf("latest_no_wait %d %llu\n", mapq_tail_next(t, 0, &batch[0]),
               (unsigned long long)mapq_tail_position(t));
        mapq_tail_close(t);
        return 0;
    }
    if (argc >= 4 && strcmp(argv[1], "deleted") == 0) {
        mapq_tail_options o = mapq_tail_options_default();
        o.follow = true;
        mapq_tailer *t;
        int rc = mapq_tail_open(argv[2], argv[3], 0, &o, &t);
        if (rc != MAPQ_TAIL_OK) {
            fprintf(stderr, "open: %d %s\n", rc, mapq_tail_error());
            return 1;
        }
        printf("ready\n");
        fflush(stdout);
        mapq_record r;
        for (int i = 0; i < 600; i++) {
            rc = mapq_tail_next(t, 100, &r);
            if (rc < 0) break;
        }
        printf("deleted %d %s\n", rc, mapq_tail_error());
        mapq_tail_close(t);
        return 0;
    }
    fprintf(stderr, "usage: tail_c follow|errors|deleted ...\n");
    return 2;
}
