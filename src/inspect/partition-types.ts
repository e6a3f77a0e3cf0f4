/**
 * Well-known partition types: GPT type GUIDs (UEFI specification, and the registries of the
 * systems that defined them) and MBR type bytes, with names as fdisk prints them. A type not
 * listed here is still reported by its GUID or byte; its name is then null.
 */

export const GPT_TYPE = {
  unused: '00000000-0000-0000-0000-000000000000',
  efiSystem: 'c12a7328-f81f-11d2-ba4b-00a0c93ec93b',
  legacyMbr: '024dee41-33e7-11d3-9d69-0008c781f39f',
  biosBoot: '21686148-6449-6e6f-744e-656564454649',
  microsoftReserved: 'e3c9e316-0b5c-4db8-817d-f92df00215ae',
  microsoftBasicData: 'ebd0a0a2-b9e5-4433-87c0-68b6b72699c7',
  linuxSwap: '0657fd6d-a4ab-43c4-84e5-0933c84b4f4f',
  linuxFilesystem: '0fc63daf-8483-4772-8e79-3d69d8477de4',
  linuxLvm: 'e6d6d379-f507-44c2-a23c-238f2a3df928',
} as const;

const GPT_NAMES: Record<string, string> = {
  [GPT_TYPE.efiSystem]: 'EFI System',
  [GPT_TYPE.legacyMbr]: 'MBR partition scheme',
  [GPT_TYPE.biosBoot]: 'BIOS boot',
  [GPT_TYPE.microsoftReserved]: 'Microsoft reserved',
  [GPT_TYPE.microsoftBasicData]: 'Microsoft basic data',
  '5808c8aa-7e8f-42e0-85d2-e1e90434cfb3': 'Microsoft LDM metadata',
  'af9b60a0-1431-4f62-bc68-3311714a69ad': 'Microsoft LDM data',
  'de94bba4-06d1-4d40-a16a-bfd50179d6ac': 'Windows recovery environment',
  'e75caf8f-f680-4cee-afa3-b001e56efc2d': 'Microsoft Storage Spaces',
  [GPT_TYPE.linuxSwap]: 'Linux swap',
  [GPT_TYPE.linuxFilesystem]: 'Linux filesystem',
  '3b8f8425-20e0-4f3b-907f-1a25a76f98e8': 'Linux server data',
  '44479540-f297-41b2-9af7-d131d5f0458a': 'Linux root (x86)',
  '4f68bce3-e8cd-4db1-96e7-fbcaf984b709': 'Linux root (x86-64)',
  '69dad710-2ce4-4e3c-b16c-21a1d49abed3': 'Linux root (ARM)',
  'b921b045-1df0-41c3-af44-4c6f280d3fae': 'Linux root (ARM-64)',
  '8484680c-9521-48c6-9c11-b0720656f69e': 'Linux /usr (x86-64)',
  'b0e01050-ee5f-4390-949a-9101b17104e9': 'Linux /usr (ARM-64)',
  '8da63339-0007-60c0-c436-083ac8230908': 'Linux reserved',
  '933ac7e1-2eb4-4f13-b844-0e14e2aef915': 'Linux home',
  'a19d880f-05fc-4d3b-a006-743f0f84911e': 'Linux RAID',
  [GPT_TYPE.linuxLvm]: 'Linux LVM',
  '4d21b016-b534-45c2-a9fb-5c16e091fd2d': 'Linux variable data',
  '7ec6f557-3bc5-4aca-b293-16ef5df639d1': 'Linux temporary data',
  'bc13c2ff-59e6-4262-a352-b275fd6f7172': 'Linux extended boot',
  'ca7d7ccb-63ed-4c53-861c-1742536059cc': 'Linux LUKS',
  '48465300-0000-11aa-aa11-00306543ecac': 'Apple HFS/HFS+',
  '7c3457ef-0000-11aa-aa11-00306543ecac': 'Apple APFS',
  '516e7cb4-6ecf-11d6-8ff8-00022d09712b': 'FreeBSD data',
  '516e7cb5-6ecf-11d6-8ff8-00022d09712b': 'FreeBSD swap',
  '516e7cb6-6ecf-11d6-8ff8-00022d09712b': 'FreeBSD UFS',
  '516e7cba-6ecf-11d6-8ff8-00022d09712b': 'FreeBSD ZFS',
  '6a898cc3-1dd2-11b2-99a6-080020736631': 'Solaris /usr & Apple ZFS',
  '9e1a2d38-c612-4316-aa26-8b49521e5a8b': 'PowerPC PReP boot',
};

export function gptTypeName(guid: string): string | null {
  return GPT_NAMES[guid] ?? null;
}

/** MBR type bytes of extended partitions (containers of the EBR chain). */
export const MBR_EXTENDED_TYPES: ReadonlySet<number> = new Set([0x05, 0x0f, 0x85]);
/** The MBR type byte of a GPT protective (or hybrid) entry. */
export const MBR_GPT_PROTECTIVE = 0xee;

const MBR_NAMES: Record<number, string> = {
  0x01: 'FAT12',
  0x04: 'FAT16 <32M',
  0x05: 'Extended',
  0x06: 'FAT16',
  0x07: 'HPFS/NTFS/exFAT',
  0x0b: 'W95 FAT32',
  0x0c: 'W95 FAT32 (LBA)',
  0x0e: 'W95 FAT16 (LBA)',
  0x0f: "W95 Ext'd (LBA)",
  0x11: 'Hidden FAT12',
  0x14: 'Hidden FAT16 <32M',
  0x16: 'Hidden FAT16',
  0x17: 'Hidden HPFS/NTFS',
  0x1b: 'Hidden W95 FAT32',
  0x1c: 'Hidden W95 FAT32 (LBA)',
  0x1e: 'Hidden W95 FAT16 (LBA)',
  0x27: 'Hidden NTFS WinRE',
  0x42: 'SFS / Windows dynamic disk',
  0x82: 'Linux swap / Solaris',
  0x83: 'Linux',
  0x84: 'OS/2 hidden or Intel hibernation',
  0x85: 'Linux extended',
  0x86: 'NTFS volume set',
  0x87: 'NTFS volume set',
  0x8e: 'Linux LVM',
  0xa5: 'FreeBSD',
  0xa6: 'OpenBSD',
  0xa9: 'NetBSD',
  0xaf: 'HFS / HFS+',
  0xee: 'GPT',
  0xef: 'EFI (FAT-12/16/32)',
  0xfb: 'VMware VMFS',
  0xfd: 'Linux raid autodetect',
};

export function mbrTypeName(type: number): string | null {
  return MBR_NAMES[type] ?? null;
}

/** An MBR type byte as the type text of a partition: "0x83". */
export function mbrTypeText(type: number): string {
  return `0x${type.toString(16).padStart(2, '0')}`;
}
