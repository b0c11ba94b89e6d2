// Command lxc-agent replaces nova-compute on a host: it consumes nova's
// compute RPC from RabbitMQ and runs instances as LXC system containers.
//
//	lxc-agent serve --config-file /etc/nova/nova.conf [--config-file ...]
//	lxc-agent boot|delete|list|console|ping ...   (standalone client)
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/lxc-agent/lxc-agent/pkg/driver/golxc"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

const usage = `usage: lxc-agent <command> [flags]

commands:
  serve      run the agent (consume compute RPC for this host)
  boot       cast build_and_run_instance to a host
  delete     cast terminate_instance to a host
  list       list a host's instances
  console    print an instance's console output
  ping       ping an agent (baseapi ping)
  version    print the version

Run "lxc-agent <command> -h" for the flags of a command.
`

func main() {
	if len(os.Args) < 2 {
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	cmd, args := os.Args[1], os.Args[2:]
	if cmd == golxc.HelperSubcommand { // internal: start a container outside the agent process
		os.Exit(golxc.ForkMain(args))
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	var err error
	switch cmd {
	case "serve":
		err = serve(ctx, args)
	case "boot":
		err = boot(ctx, args)
	case "delete":
		err = deleteCmd(ctx, args)
	case "list":
		err = list(ctx, args)
	case "console":
		err = console(ctx, args)
	case "ping":
		err = ping(ctx, args)
	case "version":
		fmt.Println(version)
	case "-h", "--help", "help":
		fmt.Print(usage)
	default:
		fmt.Fprintf(os.Stderr, "unknown command %q\n\n%s", cmd, usage)
		os.Exit(2)
	}
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(2)
		}
		fmt.Fprintln(os.Stderr, "lxc-agent:", err)
		os.Exit(1)
	}
}

// stringList is a repeatable flag.
type stringList []string

func (s *stringList) String() string     { return fmt.Sprint(*s) }
func (s *stringList) Set(v string) error { *s = append(*s, v); return nil }
