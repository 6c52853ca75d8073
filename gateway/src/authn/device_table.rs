//! The registered-device table as token checks and the policy read it: each device's user,
//! name and status, and the users whose access was revoked. Loaded whole from the store at
//! start and after every change.

use std::collections::{BTreeMap, HashMap};
use std::sync::RwLock;

use postern_policy::DeviceFacts;

use crate::state::{DeviceRec, DeviceStatus, RevokedUser};

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
            *r = revoked_users
                .iter()
                .map(|u| (u.user.clone(), u.before))
                .collect();
        }
    }

    /// Whether `user` has a device that is not revoked.
    pub fn has_devices(&self, user: &str) -> bool {
        self.table
            .read()
            .map(|t| {
                t.values()
                    .any(|d| d.user == user && d.status != DeviceStatus::Revoked)
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
            .map(|r| r.get(user).is_some_and(|before| iat <= *before))
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
