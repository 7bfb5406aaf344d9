/** Public entry point of the JA4+ fingerprint library. */
export { type Ja4, ja4, type Ja4Options, ja4Version, type Transport } from "./ja4.ts";
export { type Ja4s, ja4s } from "./ja4s.ts";
export {
  acceptLanguageCode,
  EMPTY_HEADERS_HASH,
  type HttpRequestHead,
  type Ja4h,
  ja4h,
  methodCode,
} from "./ja4h.ts";
export {
  type AbsentConvention,
  ja4t,
  JA4T_ABSENT_DEFAULT,
  type Ja4tOptions,
  ja4ts,
  type TcpHandshakePacket,
} from "./ja4t.ts";
export { ja4lClient, type Ja4lOptions, ja4lServer, type Ja4lTimes } from "./ja4l.ts";
export { alpnCode, type AlpnRule, isGrease } from "./common.ts";
export { EMPTY12, hash12 } from "./sha.ts";
