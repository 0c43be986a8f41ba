// Package config owns pgsluice's configuration: the typed Config value, its
// defaults (Default, the one place they live), loading (Load: one YAML file
// read with viper, then PGSLUICE_* environment overrides such as
// PGSLUICE_POOL_SIZE for pool.size) and validation.
//
// Invariants:
//   - Load returns either a Config that passed Validate or an error; a
//     *ValidationError lists every problem at once, each prefixed with the
//     key's path (pool.size, replicas[1].port, …).
//   - Unknown keys in the file and unknown PGSLUICE_* variables are errors.
//   - No package reads configuration from globals: the Config value is passed
//     down. Reloads build a fresh Config and callers swap it atomically.
//   - Secrets (passwords) are of type Secret and print as ******** in
//     --print-config and logs.
package config
