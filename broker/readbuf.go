package broker

// clientReadBuffer is the size of the read buffer of every client
// connection: for plain TCP, lent by the broker's pool only while the
// connection holds unread input (netConn.ReadLent, mochi change 62), so a
// connection waiting for its next packet holds none; for TLS and
// WebSocket, mochi's reader's own, held for the connection's life.
// mochi's default is 2 KiB. mochi reads through it only by ReadByte and
// io.ReadFull, so a packet larger than the buffer is read past it: the
// size bounds how many small packets one read(2) takes in (seven 64-byte
// publishes at 512), not what can be read. bench/README.md ("The Go
// floor"): 5% less RSS per idle connection than 2 KiB, fan-in unchanged
// within the machine's noise.
const clientReadBuffer = 512
