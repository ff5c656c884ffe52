import Testing
import ZSPool

@Suite("Size classes")
struct SizeClassTests {
    @Test("every class fits its zspage and wastes least under zsmalloc's rule", arguments: [1, 2, 4, 8, 16])
    func shapes(maxChain: Int) {
        let table = SizeClassTable(maxChain: maxChain)
        for spec in table.classes {
            #expect(spec.objectsPerZspage * spec.size <= spec.framesPerZspage * 4096)
            #expect(spec.objectsPerZspage == spec.framesPerZspage * 4096 / spec.size)
            #expect((1...maxChain).contains(spec.framesPerZspage))
            let chosen = SizeClassTable.usedPercent(size: spec.size, frames: spec.framesPerZspage)
            for frames in 1...maxChain {
                let other = SizeClassTable.usedPercent(size: spec.size, frames: frames)
                #expect(other <= chosen, "class \(spec.size): \(frames) frames use \(other)% > \(chosen)%")
                if frames < spec.framesPerZspage {
                    #expect(other < chosen, "class \(spec.size): a shorter zspage ties; zsmalloc keeps the first")
                }
            }
        }
    }

    @Test("sizes merge only with the class above of the same shape", arguments: [4, 16])
    func merging(maxChain: Int) {
        let table = SizeClassTable(maxChain: maxChain)
        for (lower, upper) in zip(table.classes, table.classes.dropFirst()) {
            #expect(lower.size < upper.size)
            #expect(lower.framesPerZspage != upper.framesPerZspage || lower.objectsPerZspage != upper.objectsPerZspage)
        }
        for size in 1...4096 {
            let spec = table.classes[table.classIndex(forSize: size)]
            #expect(spec.size >= size)
            // The class serving `size` has the shape `size`'s own 16-byte
            // step would have chosen.
            let step = max(32, (size + 15) / 16 * 16)
            var frames = 1
            var best = 0
            for candidate in 1...maxChain where SizeClassTable.usedPercent(size: step, frames: candidate) > best {
                best = SizeClassTable.usedPercent(size: step, frames: candidate)
                frames = candidate
            }
            #expect(spec.framesPerZspage == frames && spec.objectsPerZspage == frames * 4096 / step)
            if spec.index > 0 { #expect(table.classes[spec.index - 1].size < size) }
        }
    }

    @Test("the huge class holds one raw page per frame; 3264 is the largest shared size at chain 4")
    func hugeClass() {
        let table = SizeClassTable(maxChain: 4)
        #expect(table.hugeClass.size == 4096 && table.hugeClass.isHuge)
        #expect(table.hugeThreshold == 3264)
        #expect(table.classes[table.classIndex(forSize: 3265)].isHuge)
        #expect(!table.classes[table.classIndex(forSize: 3264)].isHuge)
        #expect(table.classes.filter(\.isHuge).count == 1)
        #expect(SizeClassTable(maxChain: 16).hugeThreshold > 3264)
    }

    @Test("first-object offsets are right for every class and frame", arguments: [4, 16])
    func firstObjectOffsets(maxChain: Int) {
        let table = SizeClassTable(maxChain: maxChain)
        for spec in table.classes {
            #expect(spec.firstObjectOffsets.count == spec.framesPerZspage)
            for frame in 0..<spec.framesPerZspage {
                // Brute force: the first object starting at or after the frame.
                let frameStart = frame * 4096
                let object = (frameStart + spec.size - 1) / spec.size
                #expect(spec.firstObjectOffsets[frame] == object * spec.size - frameStart)
            }
        }
        let class48 = table.classes[table.classIndex(forSize: 48)]
        #expect(class48.size == 48)
        #expect(class48.firstObjectOffsets.prefix(3) == [0, 32, 16])
    }
}
