//! The registered-device table as token checks and the policy read it: each device's user,
//! name and status, and the users whose access was revoked. Loaded whole from the store at
//! start and after every change.

use std::collections::{BTreeMap, HashMap};
use std::sync::RwLock;

use postern_policy::DeviceFacts;

use crate::state::{same_user, DeviceRec, DeviceStatus, RevokedUser};

/// What the running gateway knows about a device, for token checks and policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceView {
    pub user: String,
    pub name: String,
    pub status: DeviceStatus,
}

/// The device table and revoked users.
#[derive(Default)]
pub struct DeviceTable {
    table: RwLock<HashMap<String, DeviceView>>,
    /// Revoked users, keyed ASCII-lowercased (user names compare ignoring case).
    revoked_users: RwLock<HashMap<String, u64>>,
}

impl DeviceTable {
    /// Replaces the device table and revoked users (from the store).
    pub fn load(&self, devices: &[DeviceRec], revoked_users: &[RevokedUser]) {
        if let Ok(mut t) = self.table.write() {
            *t = devices
                .iter()
                .map(|d| {
                    (
                        d.id.clone(),
                        DeviceView {
                            user: d.user.clone(),
                            name: d.name.clone(),
                            status: d.status,
                        },
                    )
                })
                .collect();
        }
        if let Ok(mut r) = self.revoked_users.write() {
            let mut map: HashMap<String, u64> = HashMap::new();
            for u in revoked_users {
                // A store written before names were lowercased may hold several spellings.
                let before = map.entry(u.user.to_ascii_lowercase()).or_insert(0);
                *before = (*before).max(u.before);
            }
            *r = map;
        }
    }

    /// Whether `user` has a device that is not revoked.
    pub fn has_devices(&self, user: &str) -> bool {
        self.table
            .read()
            .map(|t| {
                t.values()
                    .any(|d| same_user(&d.user, user) && d.status != DeviceStatus::Revoked)
            })
            .unwrap_or(false)
    }

    pub fn view(&self, id: &str) -> Option<DeviceView> {
        self.table.read().ok().and_then(|t| t.get(id).cloned())
    }

    /// Whether tokens of `user` issued at `iat` were revoked (`user revoke`).
    pub fn user_revoked(&self, user: &str, iat: u64) -> bool {
        self.revoked_users
            .read()
            .map(|r| {
                r.get(&user.to_ascii_lowercase())
                    .is_some_and(|before| iat <= *before)
            })
            .unwrap_or(true)
    }

    /// The policy's device facts for a token bound to device `id`.
    pub fn facts(
        &self,
        id: &str,
        uv: bool,
        posture: Option<&BTreeMap<String, String>>,
    ) -> DeviceFacts {
        let status = self.view(id).map(|v| v.status);
        DeviceFacts {
            registered: matches!(status, Some(DeviceStatus::Active | DeviceStatus::Pending)),
            approved: status == Some(DeviceStatus::Active),
            user_verified: uv,
            posture: posture.cloned().unwrap_or_default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(id: &str, user: &str) -> DeviceRec {
        DeviceRec {
            id: id.into(),
            user: user.into(),
            name: "laptop".into(),
            status: DeviceStatus::Active,
            credential_id: format!("cred-{id}"),
            aaguid: "00000000-0000-0000-0000-000000000000".into(),
            sign_count: 0,
            user_verified: true,
            backup_eligible: false,
            backup_state: false,
            transports: vec![],
            created: 1,
            last_seen: None,
            approved: None,
            approved_by: None,
            revoked: None,
            revoked_reason: None,
            posture: None,
            passkey: serde_json::Value::Null,
        }
    }

    #[test]
    fn revoked_users_and_device_owners_match_ignoring_case() {
        let t = DeviceTable::default();
        let revoked = [
            RevokedUser {
                user: "ann.jones@h.example".into(),
                before: 100,
            },
            // An older store may hold another spelling: the later revocation counts.
            RevokedUser {
                user: "Ann.Jones@H.example".into(),
                before: 200,
            },
        ];
        t.load(&[device("dev-1", "ANN.JONES@h.example")], &revoked);
        assert!(t.user_revoked("Ann.Jones@H.Example", 150));
        assert!(t.user_revoked("ann.jones@h.example", 200));
        assert!(!t.user_revoked("ann.jones@h.example", 201));
        assert!(!t.user_revoked("bob@h.example", 1));
        assert!(t.has_devices("ann.jones@H.EXAMPLE"));
        assert!(!t.has_devices("ann.jones@h.example.evil"));
    }
}
