package main

import (
	"bufio"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/mote-mqtt/mote/broker/auth"
)

// runPasswd is mosquitto_passwd: it writes the same file format.
func runPasswd(args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("mote passwd", flag.ContinueOnError)
	fs.SetOutput(stderr)
	create := fs.Bool("c", false, "create the file, overwriting one that exists")
	del := fs.Bool("D", false, "delete the user")
	batch := fs.Bool("b", false, "take the password from the command line")
	iter := fs.Int("I", auth.DefaultIterations, fmt.Sprintf("PBKDF2 iterations, 1 to %d", auth.MaxIterations))
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: mote passwd [-c | -D] [-I N] FILE USER\n       mote passwd [-c] [-I N] -b FILE USER PASSWORD")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	want := 2
	if *batch {
		want = 3
	}
	if fs.NArg() != want || (*create && *del) {
		fs.Usage()
		return errUsage
	}
	if *iter < 1 || *iter > auth.MaxIterations {
		fmt.Fprintf(stderr, "mote passwd: -I %d: PBKDF2 iterations must be 1 to %d (Mosquitto's default is %d); more would make every login take too long\n",
			*iter, auth.MaxIterations, auth.DefaultIterations)
		return errUsage
	}
	file, user := fs.Arg(0), fs.Arg(1)
	users := auth.NewUsers()
	if !*create {
		var err error
		if users, err = auth.LoadPasswords(file); err != nil {
			return err
		}
	}
	if *del {
		if !users.Delete(user) {
			return fmt.Errorf("user %q is not in %s", user, file)
		}
		return users.Save(file)
	}
	pw := ""
	if *batch {
		pw = fs.Arg(2)
	} else {
		var err error
		if pw, err = readPassword(stdin, stdout); err != nil {
			return err
		}
	}
	if err := users.Set(user, pw, *iter); err != nil {
		return err
	}
	return users.Save(file)
}

// readPassword reads the password and its confirmation, one per line.
func readPassword(stdin io.Reader, stdout io.Writer) (string, error) {
	r := bufio.NewReader(stdin)
	read := func(prompt string) (string, error) {
		fmt.Fprint(stdout, prompt)
		s, err := r.ReadString('\n')
		if err != nil && !(errors.Is(err, io.EOF) && s != "") {
			return "", fmt.Errorf("reading the password: %w", err)
		}
		return strings.TrimRight(s, "\r\n"), nil
	}
	pw, err := read("Password: ")
	if err != nil {
		return "", err
	}
	if f, ok := stdin.(*os.File); ok {
		if fi, err := f.Stat(); err == nil && fi.Mode()&os.ModeCharDevice == 0 {
			return pw, nil // piped in: one line
		}
	}
	again, err := read("Reenter password: ")
	if err != nil {
		return "", err
	}
	if again != pw {
		return "", errors.New("passwords do not match")
	}
	return pw, nil
}
