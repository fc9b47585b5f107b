//! `LIFELINE` (the host firewall's exemptions), written once at the start
//! by the agent (`crate::host`), its only writer.

use axoneme_bpf_common::map_names::LIFELINE;
use axoneme_bpf_common::LifelineKey;
use aya::maps::{HashMap, MapData};

use super::maps::typed;
use super::{map_error, Datapath, DatapathError};

impl Datapath {
    /// Makes `LIFELINE` hold exactly `keys`.
    pub fn set_lifelines(&mut self, keys: &[LifelineKey]) -> Result<(), DatapathError> {
        let mut map: HashMap<MapData, LifelineKey, u8> = typed(&mut self.ebpf, LIFELINE)?;
        let old: Vec<LifelineKey> = map.keys().filter_map(Result::ok).collect();
        for k in old.iter().filter(|k| !keys.contains(k)) {
            map.remove(k)
                .map_err(|source| map_error(LIFELINE, "remove", source))?;
        }
        for k in keys {
            map.insert(k, 1, 0)
                .map_err(|source| map_error(LIFELINE, "update", source))?;
        }
        Ok(())
    }
}
