// Command pgsluice-floor runs one of the minimal forwarders of package
// bench/floor, for bench scenario 8 (`make bench-floor`). It is a
// measuring tool, not a proxy: see bench/floor's documentation.
//
//	pgsluice-floor -model loop -listen 127.0.0.1:6433 -server 'postgres://app:secret@127.0.0.1:5432/app' -pool 20
package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"os"
	"time"

	"github.com/pgsluice/pgsluice/bench/floor"
)

func main() {
	model := flag.String("model", "loop", "copy, pool, loop, park or park1")
	listen := flag.String("listen", "127.0.0.1:6433", "address to accept clients on")
	server := flag.String("server", "", "PostgreSQL DSN the server connections log in with (copy uses only its host and port)")
	size := flag.Int("pool", 20, "server connections (pool and loop)")
	flag.Parse()
	if *server == "" {
		fmt.Fprintln(os.Stderr, "pgsluice-floor: -server is required")
		os.Exit(2)
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		fmt.Fprintln(os.Stderr, "pgsluice-floor:", err)
		os.Exit(1)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	fmt.Fprintf(os.Stderr, "pgsluice-floor: model %s on %s\n", *model, ln.Addr())
	err = floor.Serve(ctx, ln, floor.Model(*model), *server, *size)
	fmt.Fprintln(os.Stderr, "pgsluice-floor:", err)
	os.Exit(1)
}
