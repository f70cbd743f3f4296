package main

// The ESX Server sparse extent ("COWD"), the format of a vmfsSparse snapshot delta.
// Reference: VMware "Virtual Disk Format 5.0", "ESX Server Sparse Extents" (COWDisk_Header:
// magic "COWD", version 1, numSectors, grainSize in sectors, gdOffset and numGDEntries of
// the grain directory, freeSector; grain tables of 4096 32-bit sector offsets; 0 = grain
// not allocated, read from the parent). qemu block/vmdk.c (VMDK3Header,
// vmdk_open_vmfs_sparse) reads exactly these fields, with 4096-entry grain tables.
//
// Grain size: 1 sector. ESXi's vmfsSparse redo logs allocate in 512-byte units (VMware
// contrasts this with SEsparse's 4 KiB grains); qemu reads any granularity.
// Layout we write: header in sectors 0-3, grain directory from sector 4, then grain
// tables (32 sectors each) and grains appended at freeSector as they are first written.

import (
	"encoding/binary"
	"fmt"
	"os"
)

const (
	cowdMagic      = "COWD"
	cowdHeaderSize = 2048 // 4 sectors, the size of COWDisk_Header
	gtEntries      = 4096
	gtSectors      = gtEntries * 4 / sector
	cowdGrain      = 1 // sectors per grain
)

type cowd struct {
	f       *os.File
	sectors uint32
	grain   uint32
	gdOff   uint32
	free    uint32
	gd      []uint32
	gts     map[uint32][]uint32 // grain directory index -> its grain table, cached
}

func gdEntriesFor(sectors int64) uint32 {
	span := int64(gtEntries * cowdGrain)
	return uint32((sectors + span - 1) / span)
}

// createCOWD writes an empty delta of the given capacity: header + zeroed grain directory.
func createCOWD(file string, sectors int64) error {
	n := gdEntriesFor(sectors)
	gdSectors := (n*4 + sector - 1) / sector
	hdr := make([]byte, cowdHeaderSize+int(gdSectors)*sector)
	copy(hdr, cowdMagic)
	le := binary.LittleEndian
	le.PutUint32(hdr[4:], 1)                // version
	le.PutUint32(hdr[8:], 3)                // flags, as ESX writes them
	le.PutUint32(hdr[12:], uint32(sectors)) // numSectors
	le.PutUint32(hdr[16:], cowdGrain)       // grainSize
	le.PutUint32(hdr[20:], 4)               // gdOffset (sector)
	le.PutUint32(hdr[24:], n)               // numGDEntries
	le.PutUint32(hdr[28:], 4+gdSectors)     // freeSector
	return os.WriteFile(file, hdr, 0644)
}

func openCOWD(file string) (*cowd, error) {
	f, err := os.OpenFile(file, os.O_RDWR, 0)
	if err != nil {
		return nil, err
	}
	hdr := make([]byte, 32)
	if _, err := f.ReadAt(hdr, 0); err != nil || string(hdr[:4]) != cowdMagic {
		f.Close()
		return nil, fmt.Errorf("%s: not a COWD sparse extent", file)
	}
	le := binary.LittleEndian
	c := &cowd{f: f, sectors: le.Uint32(hdr[12:]), grain: le.Uint32(hdr[16:]),
		gdOff: le.Uint32(hdr[20:]), free: le.Uint32(hdr[28:]), gts: map[uint32][]uint32{}}
	c.gd = make([]uint32, le.Uint32(hdr[24:]))
	raw := make([]byte, len(c.gd)*4)
	if _, err := f.ReadAt(raw, int64(c.gdOff)*sector); err != nil {
		f.Close()
		return nil, err
	}
	for i := range c.gd {
		c.gd[i] = le.Uint32(raw[i*4:])
	}
	return c, nil
}

func (c *cowd) Close() error { return c.f.Close() }

func (c *cowd) table(gdi uint32) ([]uint32, error) {
	if t, ok := c.gts[gdi]; ok || c.gd[gdi] == 0 {
		return t, nil
	}
	raw := make([]byte, gtEntries*4)
	if _, err := c.f.ReadAt(raw, int64(c.gd[gdi])*sector); err != nil {
		return nil, err
	}
	t := make([]uint32, gtEntries)
	for i := range t {
		t[i] = binary.LittleEndian.Uint32(raw[i*4:])
	}
	c.gts[gdi] = t
	return t, nil
}

// lookup: byte offset in the file of the grain holding guest sector s, or -1 if the
// grain is not allocated here (the parent supplies it).
func (c *cowd) lookup(s int64) (int64, error) {
	g := s / int64(c.grain)
	t, err := c.table(uint32(g / gtEntries))
	if err != nil || t == nil {
		return -1, err
	}
	e := t[g%gtEntries]
	if e == 0 {
		return -1, nil
	}
	return int64(e)*sector + (s%int64(c.grain))*sector, nil
}

// writeGrain stores one whole grain (grain*512 bytes) for grain number g, allocating
// the grain table and the grain at freeSector on first write.
func (c *cowd) writeGrain(g int64, data []byte) error {
	gdi := uint32(g / gtEntries)
	t, err := c.table(gdi)
	if err != nil {
		return err
	}
	if t == nil {
		if err := c.allocTable(gdi); err != nil {
			return err
		}
		t = c.gts[gdi]
	}
	if e := t[g%gtEntries]; e != 0 {
		_, err := c.f.WriteAt(data, int64(e)*sector)
		return err
	}
	at := c.free
	if _, err := c.f.WriteAt(data, int64(at)*sector); err != nil {
		return err
	}
	t[g%gtEntries] = at
	var b [4]byte
	binary.LittleEndian.PutUint32(b[:], at)
	if _, err := c.f.WriteAt(b[:], int64(c.gd[gdi])*sector+(g%gtEntries)*4); err != nil {
		return err
	}
	return c.setFree(at + c.grain)
}

func (c *cowd) allocTable(gdi uint32) error {
	at := c.free
	if _, err := c.f.WriteAt(make([]byte, gtSectors*sector), int64(at)*sector); err != nil {
		return err
	}
	var b [4]byte
	binary.LittleEndian.PutUint32(b[:], at)
	if _, err := c.f.WriteAt(b[:], int64(c.gdOff)*sector+int64(gdi)*4); err != nil {
		return err
	}
	c.gd[gdi] = at
	c.gts[gdi] = make([]uint32, gtEntries)
	return c.setFree(at + gtSectors)
}

func (c *cowd) setFree(s uint32) error {
	c.free = s
	var b [4]byte
	binary.LittleEndian.PutUint32(b[:], s)
	_, err := c.f.WriteAt(b[:], 28)
	return err
}

// allocated: the grain numbers present in this extent, ascending.
func (c *cowd) allocated() ([]int64, error) {
	var out []int64
	for gdi := range c.gd {
		t, err := c.table(uint32(gdi))
		if err != nil {
			return nil, err
		}
		for i, e := range t {
			if e != 0 {
				out = append(out, int64(gdi)*gtEntries+int64(i))
			}
		}
	}
	return out, nil
}
