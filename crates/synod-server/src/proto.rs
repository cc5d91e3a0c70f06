//! Code generated from the vendored etcd protos (`proto/`).

#![allow(clippy::all, missing_docs)]

pub mod mvccpb {
    tonic::include_proto!("mvccpb");
}

pub mod etcdserverpb {
    tonic::include_proto!("etcdserverpb");
}

pub mod v3lockpb {
    tonic::include_proto!("v3lockpb");
}

pub mod v3electionpb {
    tonic::include_proto!("v3electionpb");
}

/// A key's state as etcd's messages carry it (Range, prev_kv, watch events, snapshots).
impl From<&synod_kv::KeyValue> for mvccpb::KeyValue {
    fn from(kv: &synod_kv::KeyValue) -> Self {
        mvccpb::KeyValue {
            key: kv.key.to_vec(),
            create_revision: kv.create_revision,
            mod_revision: kv.mod_revision,
            version: kv.version,
            value: kv.value.to_vec(),
            lease: kv.lease,
        }
    }
}

impl From<synod_kv::KeyValue> for mvccpb::KeyValue {
    fn from(kv: synod_kv::KeyValue) -> Self {
        mvccpb::KeyValue::from(&kv)
    }
}
