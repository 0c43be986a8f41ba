// Package local starts throw-away PostgreSQL and Redis servers on loopback
// ports for integration tests, `make demo` and the benchmarks.
//
// # What it builds
//
// Start (or StartT in tests) creates, under one base directory:
//
//   - a primary: initdb'd with trust for the `postgres` superuser from
//     127.0.0.1, wal_level=logical, max_connections=300, fsync=off and
//     full_page_writes=off (data is disposable, startup must be fast),
//     Unix sockets disabled, logs on stderr streamed line by line to
//     Options.Logf with the prefix "primary| ";
//   - the role `app` (password `secret`, SCRAM) owning database `app`, and
//     every Options.Users role with its own pg_hba.conf line (md5 roles get
//     an md5-hashed password so md5 authentication really takes place);
//   - optionally a streaming replica made with pg_basebackup -R -X stream;
//     Start returns only once pg_stat_replication on the primary shows it
//     streaming;
//   - optionally a redis-server that keeps nothing on disk.
//
// Ports are picked by binding 127.0.0.1:0; a server that loses the race for
// its port is restarted on another one. Nothing listens on any address but
// 127.0.0.1.
//
// # Running as root
//
// PostgreSQL refuses to run as root. When the caller is root, initdb,
// pg_basebackup and postgres run as the OS user `postgres` (through
// SysProcAttr.Credential); the data directories are owned by it and the
// ancestors of the base directory are given the search bit for others so it
// can reach them (t.TempDir() makes 0700 directories). As a normal user the
// programs run as the caller. Programs are found through PGBinDir and
// RedisServerPath; when missing, the error wraps ErrMissingBinary and says
// how to install them.
//
// # Lifecycle and invariants
//
// Every server is a direct child of the calling process in its own process
// group, with a parent-death signal, so a test process that dies takes its
// servers with it. Linux sends that signal when the forking *thread* exits,
// and Go ends a thread whenever a goroutine returns while locked to it, so
// every child is forked on one thread that never ends (StartCmd; use it for
// any other child with a parent-death signal). Stop shuts down replica,
// primary and redis (fast, then SIGKILL of the whole process group after a
// grace period) and waits for their log pipes to drain; after Stop returns
// no log line reaches Logf.
// Stop is idempotent. StopNode/StartNode/RestartNode, PauseReplay/
// ResumeReplay and StopRedis/StartRedis make failure tests one line each;
// nodes keep their port and data directory across restarts, so DSNs stay
// valid. All Cluster methods are safe for concurrent use.
//
// The helper queries (Exec, Query, QueryRow, Conn) connect as the superuser
// to database `app` on a fresh connection per call.
//
// The command cmd/pgsluice-cluster wraps Start for shells: it prints the
// ports as `export` lines and runs until interrupted.
package local
