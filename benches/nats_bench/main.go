// A small NATS JetStream load client for benches/compare.sh: async publish with acks
// (a bounded number in flight), then a pull consumer fetching in batches; or, with
// -queue-workers, a work queue worked off by N workers (queue.go), on NATS or on Redis.
// Built offline in GOPATH mode against Debian's golang-github-nats-io-go-nats-dev.
package main

import (
	"flag"
	"fmt"
	"os"
	"sort"
	"time"

	"github.com/nats-io/nats.go"
)

func fail(what string, err error) {
	fmt.Fprintf(os.Stderr, "nats_bench: %s: %v\n", what, err)
	os.Exit(1)
}

func percentile(d []time.Duration, q float64) int64 {
	if len(d) == 0 {
		return 0
	}
	sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
	return d[int(q*float64(len(d)-1))].Microseconds()
}

func main() {
	url := flag.String("url", "nats://127.0.0.1:4222", "server")
	n := flag.Int("n", 100000, "records")
	size := flag.Int("size", 1024, "bytes per record")
	inflight := flag.Int("inflight", 256, "async publishes in flight")
	fetch := flag.Int("fetch", 1000, "records per pull fetch")
	label := flag.String("label", "nats", "scenario prefix")
	workers := flag.Int("queue-workers", 0, "instead: a work queue, N workers fetching -fetch and acking each")
	redis := flag.String("redis", "", "with -queue-workers: Redis at this address, XREADGROUP + XACK")
	flag.Parse()
	if *workers > 0 && *redis != "" {
		redisQueue(*redis, *n, *size, *workers, *fetch, *label)
		return
	}
	if *workers > 0 {
		natsQueue(*url, *n, *size, *workers, *fetch, *inflight, *label)
		return
	}

	nc, err := nats.Connect(*url)
	if err != nil {
		fail("connect", err)
	}
	defer nc.Close()
	js, err := nc.JetStream(nats.PublishAsyncMaxPending(*inflight))
	if err != nil {
		fail("jetstream", err)
	}
	_ = js.DeleteStream("BENCH")
	if _, err := js.AddStream(&nats.StreamConfig{Name: "BENCH", Subjects: []string{"bench"}, Storage: nats.FileStorage}); err != nil {
		fail("add stream", err)
	}
	payload := make([]byte, *size)

	// Produce: each ack's latency is taken when a collector sees it, in publish order.
	futures := make(chan struct {
		f nats.PubAckFuture
		t time.Time
	}, *inflight*2)
	lat := make([]time.Duration, 0, *n)
	done := make(chan struct{})
	go func() {
		for x := range futures {
			select {
			case <-x.f.Ok():
			case err := <-x.f.Err():
				fail("publish", err)
			}
			lat = append(lat, time.Since(x.t))
		}
		close(done)
	}()
	start := time.Now()
	for i := 0; i < *n; i++ {
		t := time.Now()
		// A generous stall wait: with a sync on every message, acks come slowly.
		f, err := js.PublishAsync("bench", payload, nats.StallWait(60*time.Second))
		if err != nil {
			fail("publish", err)
		}
		futures <- struct {
			f nats.PubAckFuture
			t time.Time
		}{f, t}
	}
	close(futures)
	<-done
	elapsed := time.Since(start).Seconds()
	fmt.Printf("RESULT %s_produce records_per_s=%.0f mb_per_s=%.1f p50_us=%d p99_us=%d\n", *label,
		float64(*n)/elapsed, float64(*n**size)/elapsed/1e6, percentile(lat, 0.5), percentile(lat, 0.99))

	// Consume: a pull consumer without acks, fetching batches.
	sub, err := js.PullSubscribe("bench", "bench-reader", nats.AckNone(), nats.DeliverAll())
	if err != nil {
		fail("subscribe", err)
	}
	got := 0
	flat := make([]time.Duration, 0, *n / *fetch + 1)
	cstart := time.Now()
	for got < *n {
		t := time.Now()
		msgs, err := sub.Fetch(*fetch, nats.MaxWait(10*time.Second))
		if err != nil {
			fail("fetch", err)
		}
		flat = append(flat, time.Since(t))
		got += len(msgs)
	}
	celapsed := time.Since(cstart).Seconds()
	fmt.Printf("RESULT %s_consume records_per_s=%.0f mb_per_s=%.1f p50_us=%d p99_us=%d\n", *label,
		float64(got)/celapsed, float64(got**size)/celapsed/1e6, percentile(flat, 0.5), percentile(flat, 0.99))
}
