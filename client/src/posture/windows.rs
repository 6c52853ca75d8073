//! Windows posture, gathered as the signed-in user (no administrator rights) with the tools
//! every Windows 10/11 has: `reg.exe`, `netsh.exe`, `powercfg.exe` and Windows PowerShell.
//! Every fact is `unknown` unless the output says it plainly; nothing here guesses.
//!
//! * OS: `HKLM\SOFTWARE\Microsoft\Windows NT\CurrentVersion` — `ProductName` (named
//!   "Windows 11" from build 22000 on: Windows 11 still says "Windows 10" there), and
//!   `major.minor.build.UBR` from `CurrentMajorVersionNumber`, `CurrentMinorVersionNumber`,
//!   `CurrentBuild` and `UBR` (the update revision).
//! * `disk_encrypted`: BitLocker on the system drive (`%SystemDrive%`) through the shell
//!   property `System.Volume.BitLockerProtection` (PowerShell, `Shell.Application`), which
//!   Explorer itself reads and which needs no rights (`manage-bde` and `Get-BitLockerVolume`
//!   need an administrator). 1 is "on" → `true`, 2 is "off" → `false`. The other values
//!   (encrypting, decrypting, suspended, locked…) are not documented by Microsoft and public
//!   sources disagree on which is which: `unknown`.
//! * `firewall`: `netsh advfirewall show allprofiles state` (no rights needed): `true` when the
//!   Domain, Private and Public profiles are all ON, `false` when any is OFF, else `unknown`
//!   (including output in another display language).
//! * `screen_lock`: whether the session locks by itself after inactivity, from three sources:
//!   the machine inactivity limit (`InactivityTimeoutSecs` under
//!   `HKLM\SOFTWARE\Microsoft\Windows\CurrentVersion\Policies\System`), a password-protected
//!   screen saver (`HKCU\Control Panel\Desktop`, overridden by Group Policy under
//!   `HKCU\Software\Policies\Microsoft\Windows\Control Panel\Desktop`), and sleep after
//!   inactivity with a password on wake-up, plugged in and on battery (`powercfg /q` of the
//!   active scheme, overridden by Group Policy under
//!   `HKLM\SOFTWARE\Policies\Microsoft\Power\PowerSettings`). `true` when any of them locks;
//!   `false` only when all three were read and none does; else `unknown`.

use std::collections::BTreeMap;
use std::time::Duration;

use super::{run_full, Fact};

/// How long one command may take. PowerShell's first start on a cold laptop can take seconds.
const COMMAND_LIMIT: Duration = Duration::from_secs(5);
const POWERSHELL_LIMIT: Duration = Duration::from_secs(12);

/// One registry value as `reg query` prints it: type (`REG_SZ`, `REG_DWORD`, …) and data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegValue {
    pub kind: String,
    pub data: String,
}

impl RegValue {
    /// The value as a number: a `REG_DWORD`/`REG_QWORD` (`0x…`) or a decimal `REG_SZ`.
    pub fn number(&self) -> Option<u64> {
        let d = self.data.trim();
        match self.kind.as_str() {
            "REG_DWORD" | "REG_QWORD" => {
                u64::from_str_radix(d.strip_prefix("0x").or(d.strip_prefix("0X"))?, 16).ok()
            }
            "REG_SZ" | "REG_EXPAND_SZ" => d.parse().ok(),
            _ => None,
        }
    }

    /// The value as text (`REG_SZ`, `REG_EXPAND_SZ` only).
    pub fn text(&self) -> Option<&str> {
        matches!(self.kind.as_str(), "REG_SZ" | "REG_EXPAND_SZ").then_some(self.data.as_str())
    }
}

/// The values of one key, by lower-case name (registry names are case-insensitive).
pub type RegValues = BTreeMap<String, RegValue>;

/// The values of the key in `reg query KEY` output (no `/s`): the lines indented under the
/// key's name, `NAME    TYPE    DATA`. Subkeys (unindented full paths) are skipped.
pub fn parse_reg_query(text: &str) -> RegValues {
    let mut values = RegValues::new();
    for line in text.lines() {
        let line = line.trim_end_matches('\r');
        let Some(body) = line.strip_prefix("    ") else {
            continue;
        };
        // The name may contain spaces; the type is the first field that starts with REG_.
        let Some((name, rest)) = body.split_once("    REG_") else {
            continue;
        };
        let rest = format!("REG_{rest}");
        let (kind, data) = match rest.split_once("    ") {
            Some((k, d)) => (k.to_owned(), d.to_owned()),
            None => (rest.trim_end().to_owned(), String::new()),
        };
        values.insert(name.trim().to_lowercase(), RegValue { kind, data });
    }
    values
}

/// Whether `reg query PARENT` output lists `child` (a full key path such as
/// `HKEY_CURRENT_USER\Software\Policies\Microsoft`) as a subkey.
pub fn lists_subkey(parent_listing: &str, child: &str) -> bool {
    parent_listing
        .lines()
        .map(|l| l.trim_end_matches('\r'))
        .any(|l| !l.starts_with(' ') && l.eq_ignore_ascii_case(child))
}

/// What reading one registry key found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegKey {
    Values(RegValues),
    /// The key does not exist (its nearest existing ancestor was read and does not list it):
    /// for a policy key, no policy is set.
    Missing,
    /// reg.exe did not answer, or the key exists but could not be read.
    Failed,
}

impl RegKey {
    fn values(&self) -> Option<&RegValues> {
        match self {
            RegKey::Values(v) => Some(v),
            _ => None,
        }
    }
}

async fn reg_query(path: &str) -> Option<String> {
    let out = run_full("reg", &["query", path], COMMAND_LIMIT).await?;
    out.ok.then_some(out.stdout)
}

/// Reads the values of `path` (a full key path, `HKEY_…\…`). When reg.exe fails (it answers
/// the same exit code for "no such key" and for other errors, in the display language), the
/// nearest ancestor that can be read tells whether the key exists.
async fn reg_key(path: &str) -> RegKey {
    if let Some(out) = reg_query(path).await {
        return RegKey::Values(parse_reg_query(&out));
    }
    let mut child = path;
    while let Some((parent, _)) = child.rsplit_once('\\') {
        if let Some(listing) = reg_query(parent).await {
            return if lists_subkey(&listing, child) {
                RegKey::Failed
            } else {
                RegKey::Missing
            };
        }
        child = parent;
    }
    RegKey::Failed
}

/// Product name and version from `HKLM\SOFTWARE\Microsoft\Windows NT\CurrentVersion`.
pub fn windows_version(cv: &RegValues) -> (Option<String>, Option<String>) {
    let text = |n: &str| {
        cv.get(n)
            .and_then(RegValue::text)
            .map(str::trim)
            .filter(|s| !s.is_empty())
    };
    let build: Option<u64> = text("currentbuild")
        .or_else(|| text("currentbuildnumber"))
        .and_then(|b| b.parse().ok());
    let name = text("productname").map(|p| match build {
        // Windows 11 kept "Windows 10" in ProductName; build 22000 is where it begins.
        Some(b) if b >= 22000 && p.starts_with("Windows 10") => {
            format!("Windows 11{}", &p["Windows 10".len()..])
        }
        _ => p.to_owned(),
    });
    let major_minor = match (
        cv.get("currentmajorversionnumber")
            .and_then(RegValue::number),
        cv.get("currentminorversionnumber")
            .and_then(RegValue::number),
    ) {
        (Some(ma), Some(mi)) => Some(format!("{ma}.{mi}")),
        _ => text("currentversion").map(str::to_owned),
    };
    let version = match (major_minor, build) {
        (Some(mm), Some(b)) => Some(match cv.get("ubr").and_then(RegValue::number) {
            Some(ubr) => format!("{mm}.{b}.{ubr}"),
            None => format!("{mm}.{b}"),
        }),
        _ => None,
    };
    (name, version)
}

/// The firewall fact from `netsh advfirewall show allprofiles state`.
pub fn firewall_from_netsh(text: &str) -> Fact {
    let mut profile: Option<String> = None;
    let mut states: BTreeMap<String, String> = BTreeMap::new();
    for line in text.lines() {
        let t = line.trim();
        if let Some(p) = t.strip_suffix("Profile Settings:") {
            profile = Some(p.trim().to_owned());
        } else if let Some(v) = t.strip_prefix("State") {
            if let Some(p) = profile.take() {
                states.insert(p, v.trim().to_owned());
            }
        }
    }
    let all = ["Domain", "Private", "Public"];
    if states.len() != all.len() || !all.iter().all(|p| states.contains_key(*p)) {
        return Fact::Unknown;
    }
    if !states.values().all(|s| s == "ON" || s == "OFF") {
        return Fact::Unknown;
    }
    Fact::from_bool(Some(states.values().all(|s| s == "ON")))
}

/// The disk-encryption fact from the value of `System.Volume.BitLockerProtection`.
pub fn bitlocker_from(text: &str) -> Fact {
    match text.trim() {
        "1" => Fact::True,
        "2" => Fact::False,
        _ => Fact::Unknown,
    }
}

/// `C:` from `%SystemDrive%`, if it is a drive letter and a colon (it goes into a command).
pub fn system_drive(value: Option<&str>) -> Option<String> {
    let v = value?.trim();
    let b = v.as_bytes();
    (b.len() == 2 && b[0].is_ascii_alphabetic() && b[1] == b':').then(|| v.to_ascii_uppercase())
}

/// The PowerShell script that prints the system drive's BitLocker protection value.
pub fn bitlocker_script(drive: &str) -> String {
    format!(
        "(New-Object -ComObject Shell.Application).NameSpace('{drive}\\').Self.ExtendedProperty('System.Volume.BitLockerProtection')"
    )
}

/// Whether a password-protected screen saver starts after inactivity, from the user's
/// `HKCU\Control Panel\Desktop` values and the Group Policy key (`policy`, which wins value by
/// value). Some(false) as soon as one setting rules it out; Some(true) when all are on;
/// None when one that matters is absent or unreadable.
pub fn screensaver_locks(user: &RegValues, policy: Option<&RegValues>) -> Option<bool> {
    let get = |n: &str| policy.and_then(|p| p.get(n)).or_else(|| user.get(n));
    let exe = get("scrnsave.exe").and_then(RegValue::text).map(str::trim);
    let active = get("screensaveactive").and_then(RegValue::number);
    let secure = get("screensaverissecure").and_then(RegValue::number);
    let timeout = get("screensavetimeout").and_then(RegValue::number);
    // No screen saver program ("(None)" in the dialog removes it), turned off, not
    // password-protected (absent means off), or no timeout: it does not lock.
    if exe.is_none_or(str::is_empty)
        || active == Some(0)
        || secure.unwrap_or(0) == 0
        || timeout == Some(0)
    {
        return Some(false);
    }
    (active == Some(1) && timeout.is_some()).then_some(true)
}

/// Whether the machine inactivity limit (`InactivityTimeoutSecs`, "Interactive logon: Machine
/// inactivity limit") locks the session, from the `...\Policies\System` key (None: unread; a
/// missing key sets no limit).
pub fn inactivity_locks(system_policies: &RegKey) -> Option<bool> {
    match system_policies {
        RegKey::Values(v) => Some(
            v.get("inactivitytimeoutsecs")
                .and_then(RegValue::number)
                .unwrap_or(0)
                > 0,
        ),
        RegKey::Missing => Some(false),
        RegKey::Failed => None,
    }
}

/// A power setting's (plugged in, on battery) values from `powercfg /q SCHEME SUB SETTING`.
pub fn powercfg_indexes(text: &str) -> Option<(u64, u64)> {
    let find = |label: &str| {
        text.lines().find_map(|l| {
            let v = l.trim().strip_prefix(label)?.trim();
            u64::from_str_radix(v.strip_prefix("0x")?, 16).ok()
        })
    };
    Some((
        find("Current AC Power Setting Index:")?,
        find("Current DC Power Setting Index:")?,
    ))
}

/// A Group Policy power setting (`...\PowerSettings\{GUID}`): (plugged in, on battery), each
/// None when the policy does not set it.
pub fn power_policy(key: &RegValues) -> (Option<u64>, Option<u64>) {
    (
        key.get("acsettingindex").and_then(RegValue::number),
        key.get("dcsettingindex").and_then(RegValue::number),
    )
}

/// One power setting: the scheme's (AC, DC) values with Group Policy's taking precedence.
/// None when the scheme was not read or the policy key could not be.
pub fn effective_power(scheme: Option<(u64, u64)>, policy: &RegKey) -> Option<(u64, u64)> {
    let (ac, dc) = scheme?;
    match policy {
        RegKey::Missing => Some((ac, dc)),
        RegKey::Values(v) => {
            let (pac, pdc) = power_policy(v);
            Some((pac.unwrap_or(ac), pdc.unwrap_or(dc)))
        }
        RegKey::Failed => None,
    }
}

/// Whether sleeping after inactivity locks the session, plugged in and on battery: sleep after
/// N > 0 seconds (`STANDBYIDLE`) and a password on wake-up (`CONSOLELOCK`) on both.
pub fn power_locks(
    sleep_after: Option<(u64, u64)>,
    password_on_wake: Option<(u64, u64)>,
) -> Option<bool> {
    let (sac, sdc) = sleep_after?;
    let (lac, ldc) = password_on_wake?;
    Some(sac > 0 && sdc > 0 && lac != 0 && ldc != 0)
}

/// The screen-lock fact from its three sources: `true` if any locks, `false` if all were read
/// and none does, else `unknown`.
pub fn screen_lock_from(sources: &[Option<bool>]) -> Fact {
    if sources.contains(&Some(true)) {
        Fact::True
    } else if !sources.is_empty() && sources.iter().all(|s| *s == Some(false)) {
        Fact::False
    } else {
        Fact::Unknown
    }
}

const CURRENT_VERSION: &str = r"HKEY_LOCAL_MACHINE\SOFTWARE\Microsoft\Windows NT\CurrentVersion";
const SYSTEM_POLICIES: &str =
    r"HKEY_LOCAL_MACHINE\SOFTWARE\Microsoft\Windows\CurrentVersion\Policies\System";
const DESKTOP: &str = r"HKEY_CURRENT_USER\Control Panel\Desktop";
const DESKTOP_POLICY: &str =
    r"HKEY_CURRENT_USER\Software\Policies\Microsoft\Windows\Control Panel\Desktop";
/// Power settings: "Sleep after" and "Require a password on wakeup".
const STANDBYIDLE: &str = "29f6c1db-86da-48c5-9fdb-f2b67b1f44da";
const CONSOLELOCK: &str = "0e796bdb-100d-47d6-a2d5-f7d2daa51f51";

fn power_policy_key(guid: &str) -> String {
    format!(r"HKEY_LOCAL_MACHINE\SOFTWARE\Policies\Microsoft\Power\PowerSettings\{guid}")
}

async fn powercfg(sub: &str, setting: &str) -> Option<(u64, u64)> {
    let out = run_full(
        "powercfg",
        &["/q", "SCHEME_CURRENT", sub, setting],
        COMMAND_LIMIT,
    )
    .await?;
    out.ok.then(|| powercfg_indexes(&out.stdout)).flatten()
}

async fn bitlocker() -> Fact {
    let Some(drive) = system_drive(std::env::var("SystemDrive").ok().as_deref()) else {
        return Fact::Unknown;
    };
    let script = bitlocker_script(&drive);
    match run_full(
        "powershell",
        &["-NoProfile", "-NonInteractive", "-Command", &script],
        POWERSHELL_LIMIT,
    )
    .await
    {
        Some(out) if out.ok => bitlocker_from(&out.stdout),
        _ => Fact::Unknown,
    }
}

async fn firewall() -> Fact {
    match run_full(
        "netsh",
        &["advfirewall", "show", "allprofiles", "state"],
        COMMAND_LIMIT,
    )
    .await
    {
        Some(out) if out.ok => firewall_from_netsh(&out.stdout),
        _ => Fact::Unknown,
    }
}

async fn screen_lock() -> Fact {
    let (sleep_key, lock_key) = (power_policy_key(STANDBYIDLE), power_policy_key(CONSOLELOCK));
    let (system, desktop, desktop_policy, sleep, lock, sleep_policy, lock_policy) = tokio::join!(
        reg_key(SYSTEM_POLICIES),
        reg_key(DESKTOP),
        reg_key(DESKTOP_POLICY),
        powercfg("SUB_SLEEP", "STANDBYIDLE"),
        powercfg("SUB_NONE", "CONSOLELOCK"),
        reg_key(&sleep_key),
        reg_key(&lock_key)
    );
    let screensaver = match (&desktop, &desktop_policy) {
        (RegKey::Values(user), RegKey::Values(p)) => screensaver_locks(user, Some(p)),
        (RegKey::Values(user), RegKey::Missing) => screensaver_locks(user, None),
        _ => None,
    };
    screen_lock_from(&[
        inactivity_locks(&system),
        screensaver,
        power_locks(
            effective_power(sleep, &sleep_policy),
            effective_power(lock, &lock_policy),
        ),
    ])
}

/// Windows: (product name, version, facts).
pub async fn collect() -> (Option<String>, Option<String>, BTreeMap<String, Fact>) {
    let (cv, disk, fw, lock) = tokio::join!(
        reg_key(CURRENT_VERSION),
        bitlocker(),
        firewall(),
        screen_lock()
    );
    let (name, version) = cv.values().map(windows_version).unwrap_or((None, None));
    let facts = [
        ("disk_encrypted".to_owned(), disk),
        ("firewall".to_owned(), fw),
        ("screen_lock".to_owned(), lock),
    ]
    .into_iter()
    .collect();
    (name, version, facts)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `reg query "HKLM\SOFTWARE\Microsoft\Windows NT\CurrentVersion"` on Windows 11 23H2
    /// (a subset of the values, in the tool's layout: 4-space indents and separators, CRLF,
    /// subkeys as full paths after a blank line).
    const CURRENT_VERSION_11: &str = "\r\nHKEY_LOCAL_MACHINE\\SOFTWARE\\Microsoft\\Windows NT\\CurrentVersion\r\n    SystemRoot    REG_SZ    C:\\WINDOWS\r\n    BuildBranch    REG_SZ    ni_release\r\n    BuildLab    REG_SZ    22621.ni_release.220506-1250\r\n    CurrentBuild    REG_SZ    22631\r\n    CurrentBuildNumber    REG_SZ    22631\r\n    CurrentMajorVersionNumber    REG_DWORD    0xa\r\n    CurrentMinorVersionNumber    REG_DWORD    0x0\r\n    CurrentType    REG_SZ    Multiprocessor Free\r\n    CurrentVersion    REG_SZ    6.3\r\n    DisplayVersion    REG_SZ    23H2\r\n    EditionID    REG_SZ    Professional\r\n    InstallDate    REG_DWORD    0x65a4c1e2\r\n    ProductName    REG_SZ    Windows 10 Pro\r\n    RegisteredOwner    REG_SZ    Dr A Smith\r\n    UBR    REG_DWORD    0xd35\r\n\r\nHKEY_LOCAL_MACHINE\\SOFTWARE\\Microsoft\\Windows NT\\CurrentVersion\\Accessibility\r\nHKEY_LOCAL_MACHINE\\SOFTWARE\\Microsoft\\Windows NT\\CurrentVersion\\AppCompatFlags\r\n";

    /// The same query under Wine 8 (Debian's wine64, a fresh prefix set to Windows 10 with
    /// `winecfg -v win10`), as captured (CRLF line ends, trailing separators kept).
    const CURRENT_VERSION_WINE: &str = include_str!("testdata/wine-currentversion.txt");

    #[test]
    fn reg_query_values() {
        let v = parse_reg_query(CURRENT_VERSION_11);
        assert_eq!(v["currentbuild"].data, "22631");
        assert_eq!(v["ubr"].number(), Some(3381));
        assert_eq!(v["productname"].text(), Some("Windows 10 Pro"));
        assert_eq!(v["registeredowner"].text(), Some("Dr A Smith"));
        assert!(!v.contains_key("accessibility"));
        // A value with spaces in its name, and an empty default value.
        let v = parse_reg_query(
            "HKEY_X\r\n    (Default)    REG_SZ\r\n    Sleep after    REG_DWORD    0x384\r\n",
        );
        assert_eq!(v["(default)"].data, "");
        assert_eq!(v["sleep after"].number(), Some(900));
        assert!(parse_reg_query("").is_empty());
        assert!(parse_reg_query(
            "ERROR: The system was unable to find the specified registry key or value."
        )
        .is_empty());
    }

    #[test]
    fn windows_11_is_named_from_its_build() {
        let (name, version) = windows_version(&parse_reg_query(CURRENT_VERSION_11));
        assert_eq!(name.as_deref(), Some("Windows 11 Pro"));
        assert_eq!(version.as_deref(), Some("10.0.22631.3381"));
        // Windows 10 22H2 keeps its name; no UBR gives three parts.
        let w10 = "HK\r\n    CurrentBuild    REG_SZ    19045\r\n    CurrentMajorVersionNumber    REG_DWORD    0xa\r\n    CurrentMinorVersionNumber    REG_DWORD    0x0\r\n    ProductName    REG_SZ    Windows 10 Enterprise\r\n";
        assert_eq!(
            windows_version(&parse_reg_query(w10)),
            (
                Some("Windows 10 Enterprise".into()),
                Some("10.0.19045".into())
            )
        );
        // No build: no version (never made up).
        assert_eq!(
            windows_version(&parse_reg_query(
                "HK\r\n    ProductName    REG_SZ    Windows 10 Pro\r\n"
            )),
            (Some("Windows 10 Pro".into()), None)
        );
    }

    #[test]
    fn wine_reports_what_its_registry_says() {
        // After `winecfg -v win10` (as tests/tests/windows.rs sets it): no UBR.
        assert_eq!(
            windows_version(&parse_reg_query(CURRENT_VERSION_WINE)),
            (
                Some("Microsoft Windows 10".into()),
                Some("10.0.18362".into())
            )
        );
        // An empty value keeps its name.
        let v = parse_reg_query(CURRENT_VERSION_WINE);
        assert_eq!(v["registeredowner"].text(), Some(""));
    }

    #[test]
    fn missing_keys_are_told_from_failures() {
        let parent = "\r\nHKEY_CURRENT_USER\\Software\\Policies\\Microsoft\r\n    (Default)    REG_SZ\r\n\r\nHKEY_CURRENT_USER\\Software\\Policies\\Microsoft\\SystemCertificates\r\n";
        assert!(lists_subkey(
            parent,
            r"HKEY_CURRENT_USER\Software\Policies\Microsoft\SystemCertificates"
        ));
        assert!(lists_subkey(
            parent,
            r"hkey_current_user\software\policies\microsoft\systemcertificates"
        ));
        assert!(!lists_subkey(
            parent,
            r"HKEY_CURRENT_USER\Software\Policies\Microsoft\Windows"
        ));
        // A value named like the key does not count: only unindented lines are subkeys.
        assert!(!lists_subkey(
            "    HKEY_A\\B    REG_SZ    x\r\n",
            r"HKEY_A\B"
        ));
    }

    /// `netsh advfirewall show allprofiles state` (English display language).
    const NETSH_ALL_ON: &str = "\r\nDomain Profile Settings: \r\n----------------------------------------------------------------------\r\nState                                 ON\r\n\r\nPrivate Profile Settings: \r\n----------------------------------------------------------------------\r\nState                                 ON\r\n\r\nPublic Profile Settings: \r\n----------------------------------------------------------------------\r\nState                                 ON\r\nOk.\r\n\r\n";

    #[test]
    fn firewall_all_profiles() {
        assert_eq!(firewall_from_netsh(NETSH_ALL_ON), Fact::True);
        let public_off = NETSH_ALL_ON.replacen(
            "Public Profile Settings: \r\n----------------------------------------------------------------------\r\nState                                 ON",
            "Public Profile Settings: \r\n----------------------------------------------------------------------\r\nState                                 OFF",
            1,
        );
        assert_ne!(public_off, NETSH_ALL_ON);
        assert_eq!(firewall_from_netsh(&public_off), Fact::False);
        // German: "Domänenprofil-Einstellungen" / "Status EIN": not understood, so unknown.
        let german = "\r\nDomänenprofil-Einstellungen: \r\n---\r\nStatus                                EIN\r\n";
        assert_eq!(firewall_from_netsh(german), Fact::Unknown);
        // Only two profiles shown, or an unexpected state word: unknown.
        let two = NETSH_ALL_ON.split("Public Profile").next().unwrap();
        assert_eq!(firewall_from_netsh(two), Fact::Unknown);
        assert_eq!(
            firewall_from_netsh(&NETSH_ALL_ON.replace("ON\r\nOk.", "NOT CONFIGURED\r\nOk.")),
            Fact::Unknown
        );
        // Wine's netsh has no advfirewall context.
        assert_eq!(
            firewall_from_netsh(
                "The following command was not found: advfirewall show allprofiles state.\r\n"
            ),
            Fact::Unknown
        );
        assert_eq!(firewall_from_netsh(""), Fact::Unknown);
    }

    #[test]
    fn bitlocker_values() {
        assert_eq!(bitlocker_from("1\r\n"), Fact::True);
        assert_eq!(bitlocker_from("2\r\n"), Fact::False);
        for other in ["", "0", "3", "5", "6", "\r\n", "On", "12"] {
            assert_eq!(bitlocker_from(other), Fact::Unknown, "{other:?}");
        }
        assert_eq!(system_drive(Some("c:")), Some("C:".into()));
        for bad in [
            None,
            Some(""),
            Some("C"),
            Some("C:\\"),
            Some("C:');x('"),
            Some("1:"),
        ] {
            assert_eq!(system_drive(bad), None, "{bad:?}");
        }
        assert_eq!(
            bitlocker_script("C:"),
            "(New-Object -ComObject Shell.Application).NameSpace('C:\\').Self.ExtendedProperty('System.Volume.BitLockerProtection')"
        );
    }

    fn desk(lines: &[(&str, &str, &str)]) -> RegValues {
        let text: String = lines
            .iter()
            .map(|(n, k, d)| format!("    {n}    {k}    {d}\r\n"))
            .collect();
        parse_reg_query(&format!(
            "HKEY_CURRENT_USER\\Control Panel\\Desktop\r\n{text}"
        ))
    }

    #[test]
    fn screen_saver_with_password() {
        let on = desk(&[
            ("ScreenSaveActive", "REG_SZ", "1"),
            ("ScreenSaverIsSecure", "REG_SZ", "1"),
            ("ScreenSaveTimeOut", "REG_SZ", "600"),
            (
                "SCRNSAVE.EXE",
                "REG_SZ",
                "C:\\Windows\\system32\\scrnsave.scr",
            ),
        ]);
        assert_eq!(screensaver_locks(&on, None), Some(true));
        // Windows' default: active, but no screen saver chosen and no password.
        let default = desk(&[
            ("ScreenSaveActive", "REG_SZ", "1"),
            ("ScreenSaveTimeOut", "REG_SZ", "900"),
        ]);
        assert_eq!(screensaver_locks(&default, None), Some(false));
        let mut insecure = on.clone();
        insecure.insert(
            "screensaverissecure".into(),
            RegValue {
                kind: "REG_SZ".into(),
                data: "0".into(),
            },
        );
        assert_eq!(screensaver_locks(&insecure, None), Some(false));
        // Group Policy wins: it forces the password on, or the screen saver off.
        let forced_on = desk(&[("ScreenSaverIsSecure", "REG_SZ", "1")]);
        assert_eq!(screensaver_locks(&insecure, Some(&forced_on)), Some(true));
        let forced_off = desk(&[("ScreenSaveActive", "REG_SZ", "0")]);
        assert_eq!(screensaver_locks(&on, Some(&forced_off)), Some(false));
        // Secure and chosen, but no timeout recorded: cannot tell.
        let no_timeout = desk(&[
            ("ScreenSaveActive", "REG_SZ", "1"),
            ("ScreenSaverIsSecure", "REG_SZ", "1"),
            ("SCRNSAVE.EXE", "REG_SZ", "x.scr"),
        ]);
        assert_eq!(screensaver_locks(&no_timeout, None), None);
    }

    #[test]
    fn inactivity_limit() {
        let key = |v| RegKey::Values(desk(&[v]));
        let set = key(("InactivityTimeoutSecs", "REG_DWORD", "0x384"));
        assert_eq!(inactivity_locks(&set), Some(true));
        let zero = key(("InactivityTimeoutSecs", "REG_DWORD", "0x0"));
        assert_eq!(inactivity_locks(&zero), Some(false));
        let absent = key(("EnableLUA", "REG_DWORD", "0x1"));
        assert_eq!(inactivity_locks(&absent), Some(false));
        assert_eq!(inactivity_locks(&RegKey::Missing), Some(false));
        assert_eq!(inactivity_locks(&RegKey::Failed), None);
    }

    /// `powercfg /q SCHEME_CURRENT SUB_SLEEP STANDBYIDLE` (English).
    const STANDBYIDLE_OUT: &str = "Power Scheme GUID: 381b4222-f694-41f0-9685-ff5bb260df2e  (Balanced)\r\n  GUID Alias: SCHEME_BALANCED\r\n  Subgroup GUID: 238c9fa8-0aad-41ed-83f4-97be242c8f20  (Sleep)\r\n    GUID Alias: SUB_SLEEP\r\n    Power Setting GUID: 29f6c1db-86da-48c5-9fdb-f2b67b1f44da  (Sleep after)\r\n      GUID Alias: STANDBYIDLE\r\n      Minimum Possible Setting: 0x00000000\r\n      Maximum Possible Setting: 0xffffffff\r\n      Possible Settings increment: 0x00000001\r\n      Possible Settings units: Seconds\r\n    Current AC Power Setting Index: 0x00000708\r\n    Current DC Power Setting Index: 0x00000384\r\n\r\n";
    /// `powercfg /q SCHEME_CURRENT SUB_NONE CONSOLELOCK` (English).
    const CONSOLELOCK_OUT: &str = "Power Scheme GUID: 381b4222-f694-41f0-9685-ff5bb260df2e  (Balanced)\r\n  GUID Alias: SCHEME_BALANCED\r\n  Subgroup GUID: fea3413e-7e05-4911-9a71-700331f1c294  (Settings belonging to no subgroup)\r\n    GUID Alias: SUB_NONE\r\n    Power Setting GUID: 0e796bdb-100d-47d6-a2d5-f7d2daa51f51  (Require a password on wakeup)\r\n      GUID Alias: CONSOLELOCK\r\n      Possible Setting Index: 000\r\n      Possible Setting Friendly Name: No\r\n      Possible Setting Index: 001\r\n      Possible Setting Friendly Name: Yes\r\n    Current AC Power Setting Index: 0x00000001\r\n    Current DC Power Setting Index: 0x00000001\r\n\r\n";

    #[test]
    fn sleep_with_password_on_wake() {
        let sleep = powercfg_indexes(STANDBYIDLE_OUT);
        let lock = powercfg_indexes(CONSOLELOCK_OUT);
        assert_eq!(sleep, Some((1800, 900)));
        assert_eq!(lock, Some((1, 1)));
        assert_eq!(power_locks(sleep, lock), Some(true));
        // "Never" sleep when plugged in: on the desk it never locks.
        let never_ac = powercfg_indexes(&STANDBYIDLE_OUT.replace(
            "Current AC Power Setting Index: 0x00000708",
            "Current AC Power Setting Index: 0x00000000",
        ));
        assert_eq!(power_locks(never_ac, lock), Some(false));
        assert_eq!(power_locks(sleep, Some((1, 0))), Some(false));
        assert_eq!(power_locks(None, lock), None);
        assert_eq!(
            powercfg_indexes("Invalid Parameters -- try \"/?\" for help"),
            None
        );
        // Group Policy overrides the scheme; an unreadable policy key makes it unknown.
        let policy = desk(&[("ACSettingIndex", "REG_DWORD", "0x0")]);
        assert_eq!(effective_power(lock, &RegKey::Values(policy)), Some((0, 1)));
        assert_eq!(effective_power(lock, &RegKey::Missing), Some((1, 1)));
        assert_eq!(effective_power(lock, &RegKey::Failed), None);
    }

    #[test]
    fn screen_lock_needs_proof_either_way() {
        assert_eq!(screen_lock_from(&[None, Some(true), None]), Fact::True);
        assert_eq!(
            screen_lock_from(&[Some(false), Some(false), Some(false)]),
            Fact::False
        );
        // One source unread and none locking: the unread one might.
        assert_eq!(
            screen_lock_from(&[Some(false), None, Some(false)]),
            Fact::Unknown
        );
        assert_eq!(screen_lock_from(&[]), Fact::Unknown);
    }
}
