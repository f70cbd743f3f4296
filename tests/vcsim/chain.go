package main

// A disk as the guest sees it: a chain of extents, newest (the running delta) first, each
// descriptor naming its parent by parentFileNameHint (VMware "Virtual Disk Format 5.0",
// "Delta links"). A sector is read from the newest layer that has it allocated; a flat
// (VMFS) extent has every sector. Writes go to the newest layer only, as a running VM's do.

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
)

type layer struct {
	path string // local path of the descriptor
	desc *descriptor
	flat *os.File // VMFS extent, or
	cow  *cowd    // VMFSSPARSE extent
}

type chain struct {
	layers   []*layer // [0] = newest
	capacity int64    // bytes
}

func openLayer(descPath string) (*layer, error) {
	d, err := readDescriptor(descPath)
	if err != nil {
		return nil, fmt.Errorf("%s: %v", descPath, err)
	}
	l := &layer{path: descPath, desc: d}
	extent := filepath.Join(filepath.Dir(descPath), d.Extent)
	switch d.ExtentType {
	case "VMFS":
		l.flat, err = os.OpenFile(extent, os.O_RDWR, 0)
	case "VMFSSPARSE":
		l.cow, err = openCOWD(extent)
	default:
		err = fmt.Errorf("%s: extent type %s is not modelled", descPath, d.ExtentType)
	}
	return l, err
}

func (l *layer) close() {
	if l.flat != nil {
		l.flat.Close()
	}
	if l.cow != nil {
		l.cow.Close()
	}
}

func (l *layer) extentPath() string {
	return filepath.Join(filepath.Dir(l.path), l.desc.Extent)
}

// openChain follows parentFileNameHint from descPath down to the base disk.
func openChain(descPath string) (*chain, error) {
	c := &chain{}
	for p := descPath; p != ""; {
		l, err := openLayer(p)
		if err != nil {
			c.close()
			return nil, err
		}
		c.layers = append(c.layers, l)
		if len(c.layers) > 64 {
			c.close()
			return nil, fmt.Errorf("%s: parent chain too long", descPath)
		}
		p = ""
		if l.desc.ParentHint != "" {
			p = filepath.Join(filepath.Dir(l.path), l.desc.ParentHint)
		}
	}
	c.capacity = c.layers[0].desc.Sectors * sector
	return c, nil
}

func (c *chain) close() {
	for _, l := range c.layers {
		l.close()
	}
}

// locate: which layer holds guest sector s and where (-1, -1: nowhere, reads as zeros).
func (c *chain) locate(s int64) (int, int64, error) {
	for i, l := range c.layers {
		if l.flat != nil {
			if s >= l.desc.Sectors {
				return -1, -1, nil // beyond a smaller parent: zeros
			}
			return i, s * sector, nil
		}
		off, err := l.cow.lookup(s)
		if err != nil {
			return -1, -1, err
		}
		if off >= 0 {
			return i, off, nil
		}
	}
	return -1, -1, nil
}

// ReadAt reads guest bytes; runs of sectors contiguous in one file are read at once.
func (c *chain) ReadAt(p []byte, off int64) (int, error) {
	end := off + int64(len(p))
	if off < 0 || end > c.capacity {
		return 0, fmt.Errorf("read beyond capacity")
	}
	for pos := off; pos < end; {
		li, foff, err := c.locate(pos / sector)
		if err != nil {
			return int(pos - off), err
		}
		foff += pos % sector
		n := min64(sector-pos%sector, end-pos)
		for pos+n < end { // extend the run while the next sector follows on
			l2, o2, err := c.locate((pos + n) / sector)
			if err != nil || l2 != li || (li >= 0 && o2 != foff+n) {
				break
			}
			n += min64(sector, end-pos-n)
		}
		buf := p[pos-off : pos-off+n]
		if li < 0 {
			for i := range buf {
				buf[i] = 0
			}
		} else if err := readFull(c.layers[li], buf, foff); err != nil {
			return int(pos - off), err
		}
		pos += n
	}
	return len(p), nil
}

func min64(a, b int64) int64 {
	if a < b {
		return a
	}
	return b
}

func readFull(l *layer, buf []byte, at int64) error {
	f := l.flat
	if f == nil {
		f = l.cow.f
	}
	n, err := f.ReadAt(buf, at)
	if err == io.EOF && l.flat != nil { // a flat extent may be shorter than written: zeros
		for i := n; i < len(buf); i++ {
			buf[i] = 0
		}
		return nil
	}
	return err
}

// WriteAt writes guest bytes into the newest layer. In a delta, a partially written
// grain is first filled from the chain below (read-modify-write), as a redo log must.
func (c *chain) WriteAt(p []byte, off int64) (int, error) {
	if off < 0 || off+int64(len(p)) > c.capacity {
		return 0, fmt.Errorf("write beyond capacity")
	}
	top := c.layers[0]
	if top.flat != nil {
		return top.flat.WriteAt(p, off)
	}
	gsize := int64(top.cow.grain) * sector
	grain := make([]byte, gsize)
	for pos := off; pos < off+int64(len(p)); {
		g := pos / gsize
		start := g * gsize
		if _, err := c.ReadAt(grain, start); err != nil {
			return int(pos - off), err
		}
		n := copy(grain[pos-start:], p[pos-off:])
		if err := top.cow.writeGrain(g, grain); err != nil {
			return int(pos - off), err
		}
		pos += int64(n)
	}
	return len(p), nil
}

// mergeInto copies every grain allocated in layer i into the chain from layer j down
// (j > i), a consolidation step: afterwards layer j shows what layer i showed over it.
func (c *chain) mergeInto(i, j int) error {
	child := c.layers[i]
	below := &chain{layers: c.layers[j:], capacity: c.layers[j].desc.Sectors * sector}
	grains, err := child.cow.allocated()
	if err != nil {
		return err
	}
	gsize := int64(child.cow.grain) * sector
	buf := make([]byte, gsize)
	for _, g := range grains {
		at, err := child.cow.lookup(g * int64(child.cow.grain))
		if err != nil {
			return err
		}
		if _, err := child.cow.f.ReadAt(buf, at); err != nil {
			return err
		}
		if _, err := below.WriteAt(buf, g*gsize); err != nil {
			return err
		}
	}
	return nil
}

// indexOf: the layer whose descriptor is at local path p, or -1.
func (c *chain) indexOf(p string) int {
	for i, l := range c.layers {
		if l.path == p {
			return i
		}
	}
	return -1
}
