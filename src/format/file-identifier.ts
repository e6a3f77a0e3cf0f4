/** File type identifier (§2.2.1), at file offset 0. */
import { defineStruct, ascii, utf16, type Decoded } from '../codec/struct.js';

export const FILE_IDENTIFIER = defineStruct('file identifier', 520, {
  signature: { at: 0, type: ascii(8), expect: 'vhdxfile' },
  creator: { at: 8, type: utf16(512) },
});
export type FileIdentifier = Decoded<typeof FILE_IDENTIFIER.fields>;
