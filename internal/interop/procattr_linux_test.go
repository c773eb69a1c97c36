package interop

import "syscall"

// procAttr puts a child in a process group of its own (killed whole on a
// timeout) and has the kernel kill it if this test process dies first (a
// go test -timeout panic, a kill), so no broker or Python test outlives it.
func procAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}
