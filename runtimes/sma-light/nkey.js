'use strict';
// NKey user seeds (`SU…`) for the NATS client: the public key (`U…`) and an ed25519
// signature of the server's nonce, as nats-server checks them. A seed is RFC 4648 base32
// (no padding) of two prefix bytes, the 32-byte ed25519 private key and a CRC-16 (XMODEM,
// little end first); a public key the same with one prefix byte.

const crypto = require('crypto');

const ALPHABET = 'ABCDEFGHIJKLMNOPQRSTUVWXYZ234567';
const PREFIX_SEED = 18 << 3;
const PREFIX_USER = 20 << 3;
// PKCS#8 DER header of a raw 32-byte ed25519 private key.
const PKCS8_ED25519 = Buffer.from('302e020100300506032b657004220420', 'hex');

function crc16(bytes) {
  let crc = 0;
  for (const b of bytes) {
    crc ^= b << 8;
    for (let i = 0; i < 8; i++) crc = (crc & 0x8000 ? (crc << 1) ^ 0x1021 : crc << 1) & 0xffff;
  }
  return crc;
}

function base32Decode(text) {
  const out = [];
  let buffer = 0;
  let bits = 0;
  for (const ch of text) {
    const v = ALPHABET.indexOf(ch);
    if (v < 0) throw new Error('an NKey seed holds only A-Z and 2-7');
    buffer = ((buffer << 5) | v) & 0xffff;
    bits += 5;
    if (bits >= 8) {
      bits -= 8;
      out.push((buffer >> bits) & 0xff);
    }
  }
  return Buffer.from(out);
}

function base32Encode(bytes) {
  let out = '';
  let buffer = 0;
  let bits = 0;
  for (const b of bytes) {
    buffer = ((buffer << 8) | b) & 0xffff;
    bits += 8;
    while (bits >= 5) {
      bits -= 5;
      out += ALPHABET[(buffer >> bits) & 31];
    }
  }
  if (bits > 0) out += ALPHABET[(buffer << (5 - bits)) & 31];
  return out;
}

function withCrc(raw) {
  const crc = Buffer.alloc(2);
  crc.writeUInt16LE(crc16(raw));
  return Buffer.concat([raw, crc]);
}

// { publicKey, sign(nonce) -> base64url signature } of a user seed; the error never shows it.
function fromSeed(seed) {
  const raw = base32Decode(String(seed).trim());
  if (raw.length !== 36) throw new Error('not an NKey seed (wrong length)');
  const body = raw.subarray(0, 34);
  if (crc16(body) !== raw.readUInt16LE(34)) throw new Error('not an NKey seed (checksum)');
  if ((body[0] & 0xf8) !== PREFIX_SEED || (((body[0] & 7) << 5) | (body[1] >> 3)) !== PREFIX_USER) {
    throw new Error('not an NKey user seed (SU…)');
  }
  const key = crypto.createPrivateKey({ key: Buffer.concat([PKCS8_ED25519, body.subarray(2)]), format: 'der', type: 'pkcs8' });
  const spki = crypto.createPublicKey(key).export({ format: 'der', type: 'spki' });
  const publicKey = base32Encode(withCrc(Buffer.concat([Buffer.from([PREFIX_USER]), spki.subarray(spki.length - 32)])));
  return {
    publicKey,
    sign: (nonce) => crypto.sign(null, Buffer.from(nonce), key).toString('base64url'),
  };
}

module.exports = { fromSeed };
