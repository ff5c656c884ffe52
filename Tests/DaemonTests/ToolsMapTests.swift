import Foundation
import Testing
import TestSupport

/// tools/README.md is the map of tools/: a tool added without a line there
/// fails here.
@Suite("tools/README.md maps every tool")
struct ToolsMapTests {
    @Test("every executable in tools/ has its line in tools/README.md")
    func everyToolMapped() throws {
        let tools = repositoryRoot.appending(path: "tools")
        let map = try String(contentsOf: tools.appending(path: "README.md"), encoding: .utf8)
        let names = try FileManager.default.contentsOfDirectory(atPath: tools.path).filter { name in
            var isDirectory: ObjCBool = false
            let path = tools.appending(path: name).path
            return FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) && !isDirectory.boolValue
                && FileManager.default.isExecutableFile(atPath: path)
        }
        #expect(names.count > 5, "tools/ looks empty: \(names)")
        for name in names {
            #expect(map.contains("| `\(name)` |"), "tools/README.md has no line for tools/\(name)")
        }
    }
}
