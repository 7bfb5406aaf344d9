/**
 * SOCKS 4/4a/5 negotiations in front of a tunnelled stream (FoxIO's vectors put TLS behind them). Each side's
 * messages are consumed from its buffered bytes; what follows the negotiation is handed back to sniffing.
 */

/** Negotiation state of one side. `step` < 0 once the negotiation is over. */
export interface SocksState {
  version: 4 | 5;
  step: number;
}

/** consume* results besides a byte count: the message is incomplete / these bytes are not SOCKS. */
export const SOCKS_NEED_MORE = -1;
export const SOCKS_NOT_SOCKS = -2;

/** Does a side that starts with these bytes open a SOCKS negotiation (a client greeting or request)? */
export function isSocksClientStart(b: Uint8Array): boolean {
  return (b[0] === 4 || b[0] === 5) && b.length >= 2 && b[1] !== 0;
}

/** Does the other side of a SOCKS connection start with a reply of that version? */
export function isSocksServerStart(b: Uint8Array): boolean {
  return b[0] === 0 || b[0] === 5;
}

/** Length of a SOCKS5 address (atyp + address + port) at b[o]: -1 incomplete, -2 unknown address type. */
function socks5AddrLen(b: Uint8Array, o: number): number {
  if (b.length <= o) return -1;
  const t = b[o];
  if (t === 1) return 1 + 4 + 2;
  if (t === 4) return 1 + 16 + 2;
  if (t === 3) return b.length > o + 1 ? 1 + 1 + b[o + 1] + 2 : -1;
  return -2;
}

/** Consumes client messages from b; returns the bytes used, SOCKS_NEED_MORE or SOCKS_NOT_SOCKS. */
export function consumeSocksClient(m: SocksState, b: Uint8Array): number {
  let p = 0;
  if (m.version === 4) {
    // VER CMD PORT(2) IP(4) USERID NUL [DOMAIN NUL for 4a]
    if (b.length < 9) return SOCKS_NEED_MORE;
    let z = b.indexOf(0, 8);
    if (z < 0) return SOCKS_NEED_MORE;
    if (b[4] === 0 && b[5] === 0 && b[6] === 0 && b[7] !== 0) {
      z = b.indexOf(0, z + 1);
      if (z < 0) return SOCKS_NEED_MORE;
    }
    m.step = -1;
    return z + 1;
  }
  for (;;) {
    if (m.step === 0) { // greeting: VER NMETHODS METHODS
      if (b.length - p < 2 || b.length - p < 2 + b[p + 1]) return SOCKS_NEED_MORE;
      p += 2 + b[p + 1];
      m.step = 1;
    } else if (m.step === 1) {
      if (b.length - p < 1) return p;
      if (b[p] === 1) { // username/password sub-negotiation
        if (b.length - p < 2) return SOCKS_NEED_MORE;
        const ul = b[p + 1];
        if (b.length - p < 3 + ul) return SOCKS_NEED_MORE;
        const pl = b[p + 2 + ul];
        if (b.length - p < 3 + ul + pl) return SOCKS_NEED_MORE;
        p += 3 + ul + pl;
      }
      m.step = 2;
    } else {
      if (b.length - p < 4) return p > 0 ? p : SOCKS_NEED_MORE;
      if (b[p] !== 5) return SOCKS_NOT_SOCKS;
      const al = socks5AddrLen(b, p + 3);
      if (al === -2) return SOCKS_NOT_SOCKS;
      if (al < 0 || b.length - p < 3 + al) return p > 0 ? p : SOCKS_NEED_MORE;
      m.step = -1;
      return p + 3 + al;
    }
  }
}

/**
 * Consumes server replies from b; returns the bytes used, SOCKS_NEED_MORE or SOCKS_NOT_SOCKS. `granted` is
 * called when the reply grants the tunnel.
 */
export function consumeSocksServer(m: SocksState, b: Uint8Array, granted: () => void): number {
  let p = 0;
  if (m.version === 4) {
    if (b.length < 8) return SOCKS_NEED_MORE;
    if (b[1] === 0x5a) granted();
    m.step = -1;
    return 8;
  }
  for (;;) {
    if (m.step === 0) { // method choice
      if (b.length < 2) return SOCKS_NEED_MORE;
      p = 2;
      m.step = b[1] === 2 ? 1 : 2;
    } else if (m.step === 1) { // auth status
      if (b.length - p < 2) return p > 0 ? p : SOCKS_NEED_MORE;
      p += 2;
      m.step = 2;
    } else {
      if (b.length - p < 4) return p > 0 ? p : SOCKS_NEED_MORE;
      const al = socks5AddrLen(b, p + 3);
      if (al === -2) return SOCKS_NOT_SOCKS;
      if (al < 0 || b.length - p < 3 + al) return p > 0 ? p : SOCKS_NEED_MORE;
      if (b[p + 1] === 0) granted();
      m.step = -1;
      return p + 3 + al;
    }
  }
}
