public import BlockDevice

/// What the server offers: one named device, and how it is offered.
public struct NBDExport: Sendable {
    /// The export's name; clients asking for "" get it too (the default export).
    public var name: String
    public var description: String
    public var device: any BlockDevice
    public var readOnly: Bool
    /// The largest request payload accepted (NBD_INFO_BLOCK_SIZE maximum).
    public var maximumPayload: Int

    public static let defaultMaximumPayload = 32 << 20

    public init(
        name: String, description: String = "", device: any BlockDevice, readOnly: Bool = false,
        maximumPayload: Int = NBDExport.defaultMaximumPayload
    ) {
        self.name = name
        self.description = description
        self.device = device
        self.readOnly = readOnly
        self.maximumPayload = maximumPayload
    }

    public var minimumBlockSize: Int { device.minimumBlockSize }
    public var preferredBlockSize: Int { device.preferredBlockSize }

    /// Whether a client asking for `requested` gets this export.
    func answers(to requested: String) -> Bool { requested.isEmpty || requested == name }

    /// The transmission flags the export is served with. A read-only export
    /// does not offer the commands that would change it.
    public var transmissionFlags: UInt16 {
        typealias Flag = NBDTransmissionFlag
        var flags = Flag.hasFlags | Flag.sendFlush | Flag.sendDF | Flag.canMultiConn | Flag.sendCache
        if readOnly {
            flags |= Flag.readOnly
        } else {
            flags |= Flag.sendFUA | Flag.sendTrim | Flag.sendWriteZeroes | Flag.sendFastZero
        }
        return flags
    }
}
