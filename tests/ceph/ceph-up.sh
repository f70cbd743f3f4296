#!/usr/bin/env bash
# Starts a throwaway single-node Ceph cluster for the tests: one mon, one mgr, one memstore
# OSD and radosgw, all on 127.0.0.1, cephx on, pool size 1, everything under DIR.
# Writes DIR/env (source it): CEPH_CONF, HAMAL_TEST_S3_ENDPOINT, keys of an S3 test user,
# HAMAL_TEST_CEPH_KEYRING (client.hamal, RBD on pools volumes and vms).
#   tests/ceph/ceph-up.sh DIR [MEMSTORE_BYTES]      stop with: tests/ceph/ceph-down.sh DIR
# Needs: ceph-mon ceph-mgr ceph-osd ceph-common radosgw (Debian bookworm, Ceph 16).
set -euo pipefail
DIR=$(realpath -m "$1")
MEM=${2:-1073741824}
mkdir -p "$DIR"/{mon,mgr,osd,rgw,run,log}
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
MON_PORT=$(port)
RGW_PORT=$(port)
FSID=$(python3 -c 'import uuid; print(uuid.uuid4())')
CONF=$DIR/ceph.conf
export CEPH_CONF=$CONF

cat > "$CONF" <<CONF
[global]
fsid = $FSID
mon_host = v2:127.0.0.1:$MON_PORT
public_network = 127.0.0.0/8
auth_cluster_required = cephx
auth_service_required = cephx
auth_client_required = cephx
keyring = $DIR/\$name.keyring
run_dir = $DIR/run
pid_file = $DIR/run/\$name.pid
osd_pool_default_size = 1
osd_pool_default_min_size = 1
osd_pool_default_pg_num = 8
osd_pool_default_pgp_num = 8
osd_crush_chooseleaf_type = 0
mon_allow_pool_size_one = true
mon_allow_pool_delete = true
mon_warn_on_pool_no_redundancy = false
mon_data_avail_warn = 1
auth_allow_insecure_global_id_reclaim = false
paxos_propose_interval = 0.01
ms_bind_ipv6 = false
ms_bind_ipv4 = true
[mon]
mon_data = $DIR/mon/\$cluster-\$id
log_file = $DIR/log/\$name.log
[mgr]
mgr_data = $DIR/mgr/\$cluster-\$id
log_file = $DIR/log/\$name.log
[osd]
osd_objectstore = memstore
osd_data = $DIR/osd/\$cluster-\$id
memstore_device_bytes = $MEM
log_file = $DIR/log/\$name.log
[client.rgw.hamal]
rgw_frontends = beast endpoint=127.0.0.1:$RGW_PORT tcp_nodelay=1
rgw_data = $DIR/rgw
log_file = $DIR/log/\$name.log
rgw_dns_name = 127.0.0.1
CONF

ceph-authtool --create-keyring "$DIR/mon.a.keyring" --gen-key -n mon. --cap mon 'allow *' >/dev/null
ceph-authtool --create-keyring "$DIR/client.admin.keyring" --gen-key -n client.admin \
  --cap mon 'allow *' --cap osd 'allow *' --cap mds 'allow *' --cap mgr 'allow *' >/dev/null
ceph-authtool "$DIR/mon.a.keyring" --import-keyring "$DIR/client.admin.keyring" >/dev/null
monmaptool --create --addv a "[v2:127.0.0.1:$MON_PORT]" --fsid "$FSID" "$DIR/monmap" >/dev/null
ceph-mon --mkfs -i a --monmap "$DIR/monmap" --keyring "$DIR/mon.a.keyring"
ceph-mon -i a

ceph auth get-or-create mgr.x mon 'allow profile mgr' osd 'allow *' mds 'allow *' -o "$DIR/mgr.x.keyring"
mkdir -p "$DIR/mgr/ceph-x"
ceph-mgr -i x

OSD_UUID=$(python3 -c 'import uuid; print(uuid.uuid4())')
OSD_ID=$(ceph osd new "$OSD_UUID")
mkdir -p "$DIR/osd/ceph-$OSD_ID"
ceph auth get-or-create "osd.$OSD_ID" mon 'allow profile osd' mgr 'allow profile osd' osd 'allow *' -o "$DIR/osd.$OSD_ID.keyring"
ceph-osd -i "$OSD_ID" --mkfs --osd-uuid "$OSD_UUID" 2>/dev/null
ceph-osd -i "$OSD_ID"

for pool in .rgw.root default.rgw.log default.rgw.control default.rgw.meta default.rgw.buckets.index default.rgw.buckets.data default.rgw.buckets.non-ec; do
  ceph osd pool create "$pool" 8 8 >/dev/null 2>&1
  ceph osd pool application enable "$pool" rgw >/dev/null 2>&1
done
# RBD pools as OpenStack names them (Cinder volumes, Nova ephemeral disks), and a client
# limited to them, the way an operator gives the proxy its own Ceph user.
for pool in rbd volumes vms; do
  ceph osd pool create "$pool" 8 8 >/dev/null 2>&1
  ceph osd pool application enable "$pool" rbd >/dev/null 2>&1
done

# HEALTH_OK comes before the mgr reports PG states: wait for every PG active+clean.
for _ in $(seq 120); do
  if ceph pg stat 2>/dev/null | grep -qE '^[0-9]+ pgs: [0-9]+ active\+clean;'; then
    total=$(ceph pg stat | sed -E 's/^([0-9]+) pgs.*/\1/')
    clean=$(ceph pg stat | sed -E 's/^[0-9]+ pgs: ([0-9]+) active\+clean.*/\1/')
    [ "$total" = "$clean" ] && [ "$total" -gt 0 ] && break
  fi
  sleep 0.5
done

ceph auth get-or-create client.rgw.hamal mon 'allow rw' osd 'allow rwx' -o "$DIR/client.rgw.hamal.keyring"
ceph auth get-or-create client.hamal mon 'profile rbd' osd 'profile rbd pool=volumes, profile rbd pool=vms' -o "$DIR/client.hamal.keyring"
radosgw -n client.rgw.hamal

KEY=$(python3 -c 'import secrets; print("HAMALTEST" + secrets.token_hex(6).upper())')
SECRET=$(python3 -c 'import secrets; print(secrets.token_urlsafe(30))')
radosgw-admin user create --uid=hamal-test --display-name="hamal tests" --access-key="$KEY" --secret-key="$SECRET" >/dev/null
for _ in $(seq 100); do
  curl -s -o /dev/null "http://127.0.0.1:$RGW_PORT/" && break
  sleep 0.2
done
cat > "$DIR/env" <<ENV
export CEPH_CONF=$CONF
export HAMAL_TEST_S3_ENDPOINT=http://127.0.0.1:$RGW_PORT
export HAMAL_TEST_S3_ACCESS_KEY=$KEY
export HAMAL_TEST_S3_SECRET_KEY=$SECRET
export HAMAL_TEST_CEPH_KEYRING=$DIR/client.hamal.keyring
ENV
echo "ceph up in $DIR: rgw http://127.0.0.1:$RGW_PORT"
