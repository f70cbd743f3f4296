package main

// VMDK text descriptors, as ESXi writes them on VMFS.
// Reference: VMware "Virtual Disk Format 5.0", sections "The Descriptor File" (header
// fields version/CID/parentCID/createType/parentFileNameHint, extent lines
// `RW <sectors> <type> "<file>"`, the "# The Disk Data Base" ddb.* entries).
// A flat ESXi disk is createType="vmfs" with a VMFS extent (x-flat.vmdk); a snapshot
// delta (redo log) is createType="vmfsSparse" with a VMFSSPARSE extent (x-00000N-delta.vmdk)
// and parentCID/parentFileNameHint naming the disk below it.

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"regexp"
	"sort"
	"strconv"
	"strings"
)

const sector = 512

type descriptor struct {
	CID        string // 8 hex digits; changes whenever the disk's content changes
	ParentCID  string // "ffffffff" for a base disk
	CreateType string // "vmfs" or "vmfsSparse"
	ParentHint string // parentFileNameHint, relative to this descriptor's directory
	Sectors    int64  // extent size in 512-byte sectors
	ExtentType string // "VMFS" or "VMFSSPARSE"
	Extent     string // extent file name, relative to this descriptor's directory
	DDB        map[string]string
}

func (d *descriptor) sparse() bool { return d.CreateType == "vmfsSparse" }

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// touch gives the disk a new content identity, as ESXi does on the first write after
// opening a disk: a new CID and a new ddb.longContentID (what the API reports as contentId).
func (d *descriptor) touch() {
	d.CID = randomHex(4)
	d.DDB["ddb.longContentID"] = randomHex(16)
}

func (d *descriptor) render() []byte {
	var b bytes.Buffer
	b.WriteString("# Disk DescriptorFile\nversion=1\nencoding=\"UTF-8\"\n")
	fmt.Fprintf(&b, "CID=%s\nparentCID=%s\ncreateType=\"%s\"\n", d.CID, d.ParentCID, d.CreateType)
	if d.ParentHint != "" {
		fmt.Fprintf(&b, "parentFileNameHint=\"%s\"\n", d.ParentHint)
	}
	fmt.Fprintf(&b, "\n# Extent description\nRW %d %s \"%s\"\n", d.Sectors, d.ExtentType, d.Extent)
	b.WriteString("\n# The Disk Data Base\n#DDB\n\n")
	keys := make([]string, 0, len(d.DDB))
	for k := range d.DDB {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		fmt.Fprintf(&b, "%s = \"%s\"\n", k, d.DDB[k])
	}
	return b.Bytes()
}

var (
	headerLine = regexp.MustCompile(`^(\w+)\s*=\s*"?([^"]*)"?\s*$`)
	extentLine = regexp.MustCompile(`^(RW|RDONLY|NOACCESS)\s+(\d+)\s+(\w+)\s+"([^"]+)"`)
	ddbLine    = regexp.MustCompile(`^(ddb\.[\w.]+)\s*=\s*"([^"]*)"`)
)

func parseDescriptor(text []byte) (*descriptor, error) {
	if !bytes.HasPrefix(text, []byte("# Disk DescriptorFile")) {
		return nil, fmt.Errorf("not a VMDK descriptor")
	}
	d := &descriptor{DDB: map[string]string{}}
	sc := bufio.NewScanner(bytes.NewReader(text))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if m := ddbLine.FindStringSubmatch(line); m != nil {
			d.DDB[m[1]] = m[2]
		} else if m := extentLine.FindStringSubmatch(line); m != nil {
			d.Sectors, _ = strconv.ParseInt(m[2], 10, 64)
			d.ExtentType, d.Extent = m[3], m[4]
		} else if m := headerLine.FindStringSubmatch(line); m != nil {
			switch m[1] {
			case "CID":
				d.CID = m[2]
			case "parentCID":
				d.ParentCID = m[2]
			case "createType":
				d.CreateType = m[2]
			case "parentFileNameHint":
				d.ParentHint = m[2]
			}
		}
	}
	if d.Extent == "" {
		return nil, fmt.Errorf("descriptor has no extent")
	}
	return d, nil
}

func readDescriptor(file string) (*descriptor, error) {
	text, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	return parseDescriptor(text)
}

// writeDescriptor replaces the file whole (write + rename), so a reader never sees half.
func writeDescriptor(file string, d *descriptor) error {
	tmp := file + ".tmp"
	if err := os.WriteFile(tmp, d.render(), 0644); err != nil {
		return err
	}
	return os.Rename(tmp, file)
}

// geometry: ESXi's BIOS-style geometry in the ddb (255 heads x 63 sectors for SCSI,
// 16 x 63 for IDE), cylinders = capacity / (heads*sectors).
func setGeometry(d *descriptor, ide bool) {
	heads := int64(255)
	if ide {
		heads = 16
	}
	cyl := d.Sectors / (heads * 63)
	if cyl < 1 {
		cyl = 1
	}
	d.DDB["ddb.geometry.cylinders"] = strconv.FormatInt(cyl, 10)
	d.DDB["ddb.geometry.heads"] = strconv.FormatInt(heads, 10)
	d.DDB["ddb.geometry.sectors"] = "63"
}

// ddbUUID: the disk uuid as ESXi writes it, "60 00 c2 9b ... 5d-3a 0e ...".
func ddbUUID(apiUUID string) string {
	h := strings.ReplaceAll(apiUUID, "-", "")
	if len(h) != 32 {
		h = randomHex(16)
	}
	var parts []string
	for i := 0; i < 32; i += 2 {
		parts = append(parts, h[i:i+2])
	}
	return strings.Join(parts[:8], " ") + "-" + strings.Join(parts[8:], " ")
}
