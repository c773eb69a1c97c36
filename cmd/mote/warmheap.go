package main

import (
	"runtime"
	"runtime/metrics"
)

// maxWarmHeap bounds warmHeap: with GOGC=off or a large GOGC the heap
// goal is no measure of what the first cycle will touch.
const maxWarmHeap = 16 << 20

// warmPage is the kernel's page size on the machines Mote runs on; a
// smaller real page only leaves some pages untouched.
const warmPage = 4096

// warmHeap touches, once at start, the memory the heap will grow into
// before its first garbage collection, and gives it back to the heap
// (not to the system) at once. It returns how many bytes it touched.
//
// Until the first collection every allocation takes memory the process
// never touched, and its first write faults a page in: on the bench's
// VM two faults per 8-KiB span, 30–40 µs each under perf, once in 42
// plain messages (bench/README.md, "Latency p99: the broker's slow
// steps"). A fresh broker's first few thousand messages paid it; after
// a collection the freed spans are reused, already mapped. The memory
// touched here is what the heap reaches anyway before that collection
// (the goal less what the heap holds), and the runtime keeps free pages
// up to about 110% of the goal rather than returning them, so the
// resident set at the first collection is what it was without this.
func warmHeap() int {
	runtime.GC() // a fresh goal from what start-up left live
	s := []metrics.Sample{
		{Name: "/gc/heap/goal:bytes"},
		{Name: "/memory/classes/heap/objects:bytes"},
		{Name: "/memory/classes/heap/unused:bytes"},
		{Name: "/memory/classes/heap/free:bytes"},
	}
	metrics.Read(s)
	for _, x := range s {
		if x.Value.Kind() != metrics.KindUint64 {
			return 0 // not this runtime's metrics: leave the heap as it is
		}
	}
	held := s[1].Value.Uint64() + s[2].Value.Uint64() + s[3].Value.Uint64()
	goal := s[0].Value.Uint64()
	if goal <= held {
		return 0
	}
	n := min(goal-held, maxWarmHeap)
	block := make([]byte, n)
	for i := 0; i < len(block); i += warmPage {
		block[i] = 1
	}
	runtime.KeepAlive(block)
	runtime.GC() // the block's pages back to the heap, free and mapped
	return int(n)
}
