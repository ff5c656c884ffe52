/// The release both executables report (`znbd --version`, `znbdctl
/// --version`) and tools/package names the .deb after. Raised by hand at a
/// release; a build from a commit between releases reports the last one.
public enum ZNBDVersion {
    public static let number = "0.1.0"
}
