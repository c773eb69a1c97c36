//go:build unix && !linux

package interop

import "syscall"

// procAttr puts a child in a process group of its own (killed whole on a
// timeout). Only Linux can also tie the child's life to this process.
func procAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true}
}
