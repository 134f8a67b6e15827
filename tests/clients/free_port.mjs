// tests/clients/free_port.mjs — shared by the client tests.
import net from "node:net";

// A port the kernel has just handed out as free (listen on 0, read it, close): ports derived from the
// pid collided with other tests' and with outgoing connections' ports in the ephemeral range ("cannot
// listen on 127.0.0.1:40714 (in use ...)", 2026-12-06).
export function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.on("error", reject);
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}
