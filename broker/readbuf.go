package broker

// clientReadBuffer is the size of mochi's read buffer (a bufio.Reader)
// of every client connection, held for the connection's life; mochi's
// default is 2 KiB. mochi reads through it only by ReadByte and
// io.ReadFull, so a packet larger than the buffer is read past it: the
// size bounds how many small packets one read(2) takes in (seven 64-byte
// publishes at 512), not what can be read. bench/README.md ("The Go
// floor"): 5% less RSS per idle connection than 2 KiB, fan-in unchanged
// within the machine's noise.
const clientReadBuffer = 512
