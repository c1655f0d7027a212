// Work queues for benches/compare.sh, to set mapq's queue groups against: N workers take
// records in batches and ack each, until every record is acked.
//   - NATS JetStream: a stream with the work-queue retention policy, one durable pull
//     consumer with explicit acks shared by the workers; each fetches a batch and acks
//     every message (Ack, as its users do: the server removes acked messages).
//   - Redis Streams: XADD the records, then a consumer group; each worker XREADGROUP COUNT
//     batch (new entries) and XACK's the IDs it got, over RESP on its own connection (no
//     client library: Go modules cannot be fetched here).
package main

import (
	"bufio"
	"fmt"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
)

func natsQueue(url string, n, size, workers, batch, inflight int, label string) {
	nc, err := nats.Connect(url)
	if err != nil {
		fail("connect", err)
	}
	defer nc.Close()
	js, err := nc.JetStream(nats.PublishAsyncMaxPending(inflight))
	if err != nil {
		fail("jetstream", err)
	}
	_ = js.DeleteStream("JOBS")
	if _, err := js.AddStream(&nats.StreamConfig{Name: "JOBS", Subjects: []string{"jobs"},
		Storage: nats.FileStorage, Retention: nats.WorkQueuePolicy}); err != nil {
		fail("add stream", err)
	}
	payload := make([]byte, size)
	for i := 0; i < n; i++ {
		if _, err := js.PublishAsync("jobs", payload, nats.StallWait(60*time.Second)); err != nil {
			fail("publish", err)
		}
	}
	<-js.PublishAsyncComplete()
	var acked int64
	var wg sync.WaitGroup
	start := time.Now()
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sub, err := js.PullSubscribe("jobs", "workers", nats.AckExplicit(), nats.MaxAckPending(1000000))
			if err != nil {
				fail("subscribe", err)
			}
			for atomic.LoadInt64(&acked) < int64(n) {
				msgs, err := sub.Fetch(batch, nats.MaxWait(200*time.Millisecond))
				if err != nil && err != nats.ErrTimeout {
					fail("fetch", err)
				}
				for _, m := range msgs {
					if err := m.Ack(); err != nil {
						fail("ack", err)
					}
				}
				atomic.AddInt64(&acked, int64(len(msgs)))
			}
		}()
	}
	wg.Wait()
	// The last acks reach the server: a round trip after them.
	if err := nc.Flush(); err != nil {
		fail("flush", err)
	}
	elapsed := time.Since(start).Seconds()
	fmt.Printf("RESULT %s_queue records_per_s=%.0f mb_per_s=%.1f p50_us=0 p99_us=0\n", label,
		float64(n)/elapsed, float64(n*size)/elapsed/1e6)
}

// resp reads one RESP reply: a string, an int, nil, or a list of replies.
func resp(r *bufio.Reader) (interface{}, error) {
	line, err := r.ReadString('\n')
	if err != nil {
		return nil, err
	}
	line = line[:len(line)-2]
	switch line[0] {
	case '+':
		return line[1:], nil
	case '-':
		return nil, fmt.Errorf("redis: %s", line[1:])
	case ':':
		return strconv.ParseInt(line[1:], 10, 64)
	case '$':
		l, _ := strconv.Atoi(line[1:])
		if l < 0 {
			return nil, nil
		}
		buf := make([]byte, l+2)
		if _, err := io_ReadFull(r, buf); err != nil {
			return nil, err
		}
		return string(buf[:l]), nil
	case '*':
		l, _ := strconv.Atoi(line[1:])
		if l < 0 {
			return nil, nil
		}
		out := make([]interface{}, l)
		for i := range out {
			if out[i], err = resp(r); err != nil {
				return nil, err
			}
		}
		return out, nil
	}
	return nil, fmt.Errorf("redis: unexpected reply %q", line)
}

func io_ReadFull(r *bufio.Reader, buf []byte) (int, error) {
	got := 0
	for got < len(buf) {
		k, err := r.Read(buf[got:])
		got += k
		if err != nil {
			return got, err
		}
	}
	return got, nil
}

func command(w *bufio.Writer, args ...string) {
	fmt.Fprintf(w, "*%d\r\n", len(args))
	for _, a := range args {
		fmt.Fprintf(w, "$%d\r\n%s\r\n", len(a), a)
	}
}

func redisConn(addr string) (net.Conn, *bufio.Reader, *bufio.Writer) {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		fail("redis connect", err)
	}
	return c, bufio.NewReaderSize(c, 1<<20), bufio.NewWriterSize(c, 1<<20)
}

func redisQueue(addr string, n, size, workers, batch int, label string) {
	c, r, w := redisConn(addr)
	defer c.Close()
	payload := string(make([]byte, size))
	command(w, "DEL", "jobs")
	for i := 0; i < n; i++ {
		command(w, "XADD", "jobs", "*", "v", payload)
	}
	command(w, "XGROUP", "CREATE", "jobs", "workers", "0")
	if err := w.Flush(); err != nil {
		fail("redis write", err)
	}
	for i := 0; i < n+2; i++ {
		if _, err := resp(r); err != nil {
			fail("redis setup", err)
		}
	}
	var acked int64
	var wg sync.WaitGroup
	start := time.Now()
	for k := 0; k < workers; k++ {
		wg.Add(1)
		go func(k int) {
			defer wg.Done()
			c, r, w := redisConn(addr)
			defer c.Close()
			me := "w" + strconv.Itoa(k)
			for atomic.LoadInt64(&acked) < int64(n) {
				command(w, "XREADGROUP", "GROUP", "workers", me, "COUNT", strconv.Itoa(batch),
					"BLOCK", "200", "STREAMS", "jobs", ">")
				if err := w.Flush(); err != nil {
					fail("redis write", err)
				}
				reply, err := resp(r)
				if err != nil {
					fail("xreadgroup", err)
				}
				streams, _ := reply.([]interface{})
				if len(streams) == 0 {
					continue
				}
				entries, _ := streams[0].([]interface{})[1].([]interface{})
				ack := []string{"XACK", "jobs", "workers"}
				for _, e := range entries {
					ack = append(ack, e.([]interface{})[0].(string))
				}
				command(w, ack...)
				if err := w.Flush(); err != nil {
					fail("redis write", err)
				}
				if _, err := resp(r); err != nil {
					fail("xack", err)
				}
				atomic.AddInt64(&acked, int64(len(entries)))
			}
		}(k)
	}
	wg.Wait()
	elapsed := time.Since(start).Seconds()
	fmt.Printf("RESULT %s_queue records_per_s=%.0f mb_per_s=%.1f p50_us=0 p99_us=0\n", label,
		float64(n)/elapsed, float64(n*size)/elapsed/1e6)
}
