import Foundation

/// Runs `body(0..<count)` on `count` dedicated threads at once and waits for
/// all of them. Unlike `DispatchQueue.concurrentPerform`, which may run the
/// iterations one after another on a 2-core machine, every index gets its
/// own thread, so a maintenance loop really overlaps the workers.
public func runOnThreads(_ count: Int, _ body: @escaping @Sendable (Int) -> Void) {
    let done = DispatchGroup()
    for index in 0..<count {
        done.enter()
        let thread = Thread {
            body(index)
            done.leave()
        }
        thread.stackSize = 8 << 20
        thread.start()
    }
    done.wait()
}
